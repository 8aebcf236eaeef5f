"""Where studies live: storage URLs, opening a study, finding the latest one. Which process owns a
running trial (claims, heartbeats, recovering the trials of dead processes) is ``se_nas.record.claims``;
SQLite's filesystem errors are ``se_nas.record.sqlite``.

The default is one SQLite file per study, ``<root>/<study>/study.db`` (WAL mode). ``--storage``
takes any Optuna RDB URL (PostgreSQL or MySQL for many machines) or ``journal:PATH`` for a journal
file (NFS); only that prefix makes a journal. A URL's database driver is checked before connecting
(PostgreSQL: psycopg 3 from the ``se-nas[postgres]`` extra, or psycopg2), and a missing one is one
line naming the package. Every command that reads a study takes the same ``storage`` argument, so a
study run anywhere can be reported, exported and compared.

Only Optuna's public API is used (the storage object is the one ``open_study`` made).
"""
from __future__ import annotations

import os
import time
import warnings
import weakref
from pathlib import Path

from ..errors import SeNasError
from .sqlite import listen_sqlite_errors, read_only_sqlite, sqlite_path

DEFAULT_ROOT = Path("trials")
HEARTBEAT_ENV = "SE_NAS_HEARTBEAT_S"
HEARTBEAT_S = 60  # default beat; a trial is stale after HEARTBEAT_MISSES beats without one
HEARTBEAT_MISSES = 4


class StorageError(SeNasError):
    """A storage URL or study name that can't be used; the message says what is allowed."""


MAX_STUDY_NAME = 100  # characters; a folder name may be 255 bytes, and a 300-character name failed
# Characters that change how a name displays without showing themselves: the bidirectional overrides,
# embeddings and isolates (U+202E shows a folder name reversed) are format characters (Cf), like the
# zero-width ones; control characters (Cc) include newlines and escape sequences; line and paragraph
# separators (Zl, Zp) break a line; surrogates (Cs) are bytes of a path that is not UTF-8.
_HIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")


def check_study_name(name: str) -> str:
    """A study name becomes a folder name and is printed in every line about the study: a plain
    name of at most ``MAX_STUDY_NAME`` characters, no path separators, not starting with '.', and no
    control or format characters (bidi overrides such as U+202E display a name reversed)."""
    import unicodedata

    rule = ("it names the folders trials/<study>/ and reports/<study>/, so it must not be empty, contain '/' "
            "or '\\', start with '.', or hold control or invisible formatting characters, and has at most "
            f"{MAX_STUDY_NAME} characters")
    if not isinstance(name, str):
        raise StorageError(f"study name {name!r} is not allowed: {rule}")
    hidden = next((c for c in name if unicodedata.category(c) in _HIDDEN_CATEGORIES), None)
    shown = ascii(name[:60] + ("..." if len(name) > 60 else ""))  # escapes what would display wrongly
    if hidden is not None:
        raise StorageError(f"study name {shown} is not allowed: it holds U+{ord(hidden):04X} "
                           f"({unicodedata.name(hidden, 'a control or undecodable character')}); {rule}")
    if len(name) > MAX_STUDY_NAME:
        raise StorageError(f"study name {shown} is {len(name)} characters, not allowed: {rule}")
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise StorageError(f"study name {name!r} is not allowed: {rule}")
    return name


def study_dir(name: str, root: str | Path = DEFAULT_ROOT) -> Path:
    return Path(root) / check_study_name(name)


def default_storage(name: str, root: str | Path = DEFAULT_ROOT) -> str:
    return f"sqlite:///{(study_dir(name, root) / 'study.db').as_posix()}"


# The driver SQLAlchemy imports for a URL's dialect (``postgresql://`` means psycopg 3 in SQLAlchemy
# 2.1) and the package that brings it: what to install when it is missing.
DRIVER_PACKAGES = {
    "postgresql": "'se-nas[postgres]' (psycopg 3)", "postgresql+psycopg": "'se-nas[postgres]' (psycopg 3)",
    "postgresql+psycopg2": "psycopg2-binary", "postgresql+pg8000": "pg8000", "postgresql+asyncpg": "asyncpg",
    "mysql": "mysqlclient", "mysql+mysqldb": "mysqlclient", "mysql+pymysql": "PyMySQL",
}


def _rdb_url(url: str) -> str:
    """``url`` with a database driver that is installed, or one line saying which package to install.
    A plain ``postgresql://`` takes psycopg 3 (SQLAlchemy's default) and falls back to psycopg2 when
    only that is installed; a URL that names its driver (``postgresql+psycopg2://``) gets that one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        u = make_url(url)
        dialect = u.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise StorageError(f"--storage {_shown(url)}: not a storage URL SQLAlchemy knows ({e}); allowed: "
                           "sqlite:///PATH, postgresql://USER@HOST/DB, mysql+pymysql://..., journal:PATH") from None
    try:
        dialect.import_dbapi()
        return url
    except ImportError:
        pass
    if u.drivername == "postgresql":
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            pass
        else:
            return u.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    package = DRIVER_PACKAGES.get(u.drivername, f"the DB-API module of SQLAlchemy's {u.drivername!r} dialect")
    raise StorageError(f"--storage {_shown(url)} needs the database driver for {u.drivername!r}, which is not "
                       f"installed: pip install {package}")


def printable_url(url: str) -> str:
    """A storage URL as it may be printed (errors, ``next:`` hints, reports): its password as ``***``.
    Every place a storage URL reaches output goes through this."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # unparsable: show only its scheme, in case a password is in it
        return url.split("://", 1)[0] + "://..."


def without_password(text: str, url: str | None) -> str:
    """``text`` with the password of storage ``url`` masked wherever it appears: the last guard for
    messages we did not word ourselves (a driver's error that quotes its connection string)."""
    if not url or "://" not in url:
        return text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        return text.replace(url, printable_url(url))
    text = text.replace(url, printable_url(url))
    return text.replace(str(password), "***") if password else text


def _shown(url: str) -> str:
    """A storage URL as it may be printed, quoted: without its password."""
    return repr(printable_url(url))


def make_storage(name: str, url: str | None = None, root: str | Path = DEFAULT_ROOT, *, create: bool = True,
                 heartbeat: bool = False, read_only: bool = False):
    """The Optuna storage for study ``name``: the default SQLite file, an RDB URL, or a journal file
    (``journal:PATH``; nothing else is a journal, whatever its file is called). With ``heartbeat``
    (the processes that run trials) the heartbeat setting is checked (``Heartbeat`` beats). ``read_only``
    (commands that only read a study) opens a SQLite file read-only and creates no schema: a file without
    a study is a ``StudyError``."""
    import optuna

    listen_sqlite_errors()
    if url is None:
        d = study_dir(name, root)
        if create:
            d.mkdir(parents=True, exist_ok=True)
        url = default_storage(name, root)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        if not url[len("journal:"):]:
            raise StorageError("--storage 'journal:' names no file; allowed: journal:PATH")
        if heartbeat:
            heartbeat_interval()
        journal = optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        _URLS[journal] = url
        return journal
    if "://" not in url:
        raise StorageError(f"--storage must be an Optuna storage URL (sqlite:///..., postgresql://..., "
                           f"mysql://...) or journal:PATH, got {_shown(url)}")
    url = _rdb_url(url)
    if heartbeat:
        heartbeat_interval()  # a bad SE_NAS_HEARTBEAT_S is one line before anything runs
    read_only = read_only and url.startswith("sqlite")
    if read_only:
        url = read_only_sqlite(url)
        _check_has_study(url, name)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                    skip_table_creation=read_only)
            break
        except OSError:
            raise  # a filesystem problem (see _sqlite_error): retrying cannot help
        except Exception as e:
            # Two processes opening a new database at once can race on creating Optuna's schema: the
            # loser sees "table already exists" or a duplicate version row. Once it exists, retry works.
            if attempt == 2:
                raise StorageError(f"cannot open storage {_shown(url)}: {' '.join(str(e).split())[:300]}") from None
            time.sleep(0.5 * (attempt + 1))
    if url.startswith("sqlite") and not read_only:
        _fast_sqlite(storage.engine)
    _URLS[storage] = url
    return storage


def _check_has_study(url: str, name: str) -> None:
    """Refuse a SQLite file that holds no Optuna study (empty, or another program's database) before
    Optuna would write its schema into it."""
    import sqlalchemy

    from .study import StudyError

    path = sqlite_path(sqlalchemy.engine.make_url(url))
    study = "study" if name == "_" else f"study {name!r}"  # "_": latest_study looking for any study
    if path is not None and not os.path.exists(path):  # opening it would create it
        raise StudyError(f"no {study}: {path!r} does not exist; run `se-nas search` first")
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as c:
            ok = sqlalchemy.inspect(c).has_table("studies")
    except sqlalchemy.exc.DatabaseError as e:  # not a database at all
        ok, why = False, f" ({' '.join(str(e.orig).split())[:100]})"
    else:
        why = ""
    finally:
        engine.dispose()
    if not ok:
        if not why:
            why = " (it is empty)" if path and os.path.getsize(path) == 0 else " (it has no Optuna tables)"
        raise StudyError(f"no {study} in {path!r}: the file holds no Optuna study{why}; run `se-nas search` first")


def heartbeat_interval() -> int:
    """Seconds between heartbeats of a running trial on an RDB storage (``SE_NAS_HEARTBEAT_S``)."""
    raw = os.environ.get(HEARTBEAT_ENV, str(HEARTBEAT_S))
    try:
        every = int(raw)
    except ValueError:
        every = 0
    if every < 1:
        raise StorageError(f"{HEARTBEAT_ENV} must be a whole number of seconds >= 1, got {raw!r}")
    return every


def _fast_sqlite(engine) -> None:
    """WAL journal with synchronous=NORMAL: each user-attribute write is a commit, and the default
    (rollback journal, fsync per commit) made the study writes ~0.5 s per trial. WAL survives a
    killed process (only a power loss can drop the last commits) and lets worker processes read
    while one writes."""
    from sqlalchemy import event

    def pragmas(dbapi_connection, _record):
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # connections opened before the listener existed don't have the pragmas


def open_study(name: str, storage: str | None = None, root: str | Path = DEFAULT_ROOT, sampler=None,
               create: bool = False, heartbeat: bool = False, objectives=None, read_only: bool = False):
    """Open (or with ``create=True``, create) the study ``name`` in ``storage`` (default: its SQLite
    file under ``root``), a new one with the directions of ``objectives`` (default ``OBJECTIVES``);
    ``heartbeat`` for processes that run trials, ``read_only`` for commands that only read it (see
    ``make_storage``)."""
    import optuna

    from .study import OBJECTIVES, StudyError, directions

    objectives = objectives or OBJECTIVES

    check_study_name(name)
    if storage is None and not create and not (study_dir(name, root) / "study.db").exists():
        raise StudyError(f"no study {name!r} at {str(study_dir(name, root) / 'study.db')!r}; run `se-nas search` "
                         "first" + _known_studies(root))
    st = make_storage(name, storage, root, create=create, heartbeat=heartbeat, read_only=read_only and not create)
    if create:
        study = optuna.create_study(study_name=name, storage=st, sampler=sampler,
                                    directions=list(directions(objectives)), load_if_exists=True)
        if study.metric_names is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(objectives))
    else:
        try:
            study = optuna.load_study(study_name=name, storage=st, sampler=sampler)
        except KeyError:
            raise StudyError(f"no study named {name!r} in storage {_shown(storage or default_storage(name, root))}") from None
    _OPENED[study] = st
    return study


# The storage object each study was opened on (a study keeps its own only in a private attribute):
# what recover_dead_trials, claim and Heartbeat write through, with Optuna's public storage API.
_OPENED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# The URL each storage was made from: what a claim's lock is derived from (se_nas.record.claims).
_URLS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def url_of(storage) -> str | None:
    return _URLS.get(storage)


def storage_of(study):
    """The storage ``study`` was opened on by ``open_study``."""
    try:
        return _OPENED[study]
    except KeyError:
        raise StorageError(f"study {study.study_name!r} was not opened with se_nas.record.storage.open_study: "
                           "open it with open_study to run or recover its trials") from None


def trial_id(study, number: int) -> int:
    st = storage_of(study)
    return st.get_trial_id_from_study_id_trial_number(st.get_study_id_from_name(study.study_name), number)


def _known_studies(root: str | Path) -> str:
    names = sorted(p.parent.name for p in Path(root).glob("*/study.db"))
    return f"; studies here: {', '.join(names)}" if names else ""


def latest_study(root: str | Path = DEFAULT_ROOT, storage: str | None = None) -> str:
    """The most recently modified study under ``root`` (commands without a study name use
    ``default_study``, which never guesses between several),
    or, with a ``storage`` URL, the newest study in that storage."""
    if storage is not None:
        import optuna

        names = optuna.get_all_study_names(make_storage("_", storage, root, create=False, read_only=True))
        if not names:
            raise StorageError(f"no study in storage {_shown(storage)}; run `se-nas search` first")
        return names[-1]
    def changed(db: Path) -> float:  # in WAL mode the writes land in study.db-wal first
        return max(p.stat().st_mtime for p in (db, db.with_name("study.db-wal")) if p.exists())

    dbs = sorted(Path(root).glob("*/study.db"), key=changed)
    if not dbs:
        from .study import StudyError

        raise StudyError(f"no study under {str(root)!r}; run `se-nas search` first")
    return dbs[-1].parent.name


def default_study(root: str | Path = DEFAULT_ROOT, storage: str | None = None) -> str:
    """The study a command without a study name means: the only study under ``root`` (or in ``storage``),
    said in one line on stderr. With several, none is more plausible than another (the most recently
    modified one is whichever study any command wrote last, e.g. a second search), so this refuses,
    listing them (newest first, with their modification times), and asks for the name."""
    import sys
    import time

    from .study import StudyError

    if storage is not None:
        import optuna

        names = optuna.get_all_study_names(make_storage("_", storage, root, create=False, read_only=True))
        if not names:
            raise StorageError(f"no study in storage {_shown(storage)}; run `se-nas search` first")
        listed, where = names, f"in storage {_shown(storage)}"
    else:
        def changed(db: Path) -> float:  # in WAL mode the writes land in study.db-wal first
            return max(p.stat().st_mtime for p in (db, db.with_name("study.db-wal")) if p.exists())

        dbs = sorted(Path(root).glob("*/study.db"), key=changed, reverse=True)
        if not dbs:
            raise StudyError(f"no study under {str(root)!r}; run `se-nas search` first")
        names = [db.parent.name for db in dbs]
        listed = [f"{db.parent.name} (modified {time.strftime('%Y-%m-%d %H:%M', time.localtime(changed(db)))})"
                  for db in dbs]
        where = f"under {str(root)!r}"
    if len(names) > 1:
        raise StudyError(f"{len(names)} studies {where}: {', '.join(listed)}; give the study's name "
                         f"(e.g. `{names[0]}`)")
    print(f"using study {names[0]} (the only one {where})", file=sys.stderr)
    return names[0]
