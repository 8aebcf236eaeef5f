"""Where studies live: storage URLs, opening a study, finding the latest one, recovering trials of
dead processes.

The default is one SQLite file per study, ``<root>/<study>/study.db`` (WAL mode). ``--storage``
takes any Optuna RDB URL (PostgreSQL or MySQL for many machines) or ``journal:PATH`` for a journal
file (NFS); only that prefix makes a journal. A URL's database driver is checked before connecting
(PostgreSQL: psycopg 3 from the ``se-nas[postgres]`` extra, or psycopg2), and a missing one is one
line naming the package. Every command that reads a study takes the same ``storage`` argument, so a
study run anywhere can be reported, exported and compared.

A trial of a dead process (its pid gone on this host, no owner recorded after a grace period, or a
stale heartbeat on an RDB storage: its process on another machine stopped beating) is failed with a
reason naming the process and host, and retried, at most ``MAX_RETRIES`` times per design. The
heartbeat beats every ``SE_NAS_HEARTBEAT_S`` seconds (default 60); a trial is stale after four
missed beats.
"""
from __future__ import annotations

import errno
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import SeNasError

DEFAULT_ROOT = Path("trials")
MAX_RETRIES = 3  # retries of a trial whose process died, by pid (ours) or heartbeat (Optuna's)
OWNERLESS_GRACE_S = 120.0  # a RUNNING trial with no host/pid this long after its start is dead
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


def _sqlite_path(url) -> str | None:
    """The database file of a SQLite URL (``sqlite:///PATH`` or the URI form ``file:PATH?...``)."""
    db = url.database
    if not db or db == ":memory:":
        return None
    if db.startswith("file:"):
        from urllib.parse import unquote

        db = unquote(db[len("file:"):].split("?", 1)[0])
    return db


def _folder_problem(path: str) -> int:
    """Why a SQLite file could not be opened or written, as an errno: its folder missing, on a
    read-only file system, or not writable by this user."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return errno.ENOTDIR if os.path.exists(folder) else errno.ENOENT
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return errno.EROFS
    except OSError:
        pass
    return errno.EACCES if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)) \
        else errno.EIO


def _nearly_full(path: str) -> bool:
    """Whether the file system of ``path`` has less room than SQLite needs for its WAL index (64 KiB)."""
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 65536


def _sqlite_error(context) -> None:
    """SQLAlchemy's ``handle_error`` hook: a SQLite error that is a filesystem problem (a full disk,
    a read-only folder) becomes an ``OSError`` naming the database file, which the CLI says in one
    line. Otherwise Optuna reports it as "invalid data in the commit, e.g. exceeding max length"."""
    import sqlite3

    e, engine = context.original_exception, context.engine
    if not isinstance(e, sqlite3.Error) or engine is None or not engine.url.drivername.startswith("sqlite"):
        return
    path = _sqlite_path(engine.url)
    text = str(e)
    if path is None:
        return
    if "database or disk is full" in text:
        code = errno.ENOSPC
    elif "unable to open database file" in text or ("readonly database" in text
                                                    and engine.url.query.get("mode") != "ro"):
        code = _folder_problem(path)
    elif "disk I/O error" in text:  # what SQLite says when even its -shm file cannot be made on a full disk
        code = errno.ENOSPC if _nearly_full(path) else errno.EIO
    else:
        return
    raise OSError(code, os.strerror(code), path) from e


def _listen_sqlite_errors() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "handle_error", _sqlite_error):
        event.listen(Engine, "handle_error", _sqlite_error)


def _read_only_sqlite(url: str) -> str:
    """The URL a command that only reads a study opens a SQLite file with. Where the file and its
    folder are writable: the same URL (a read-write connection cleans up the WAL's ``-shm`` and
    ``-wal`` files when it closes; a read-only one would leave them behind), Optuna being kept from
    writing its schema by ``skip_table_creation``. Elsewhere (a read-only file system or folder):
    ``mode=ro``, which needs no write at all; on a read-only file system a WAL database whose
    ``-shm`` file is gone can then only be opened as immutable, which is safe because nothing can
    write it there."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    u = make_url(url)
    path = _sqlite_path(u)
    if path is None or u.query.get("uri"):
        return url  # in memory, or already a URI the user wrote: theirs
    folder = os.path.dirname(os.path.abspath(path))
    try:
        read_only_fs = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return url  # no folder: opening says so
    if not read_only_fs and os.access(folder, os.W_OK) and (not os.path.exists(path) or os.access(path, os.W_OK)):
        return url
    query = "mode=ro"
    if read_only_fs and not os.path.exists(path + "-wal"):
        query += "&immutable=1"
    return f"sqlite:///file:{quote(os.path.abspath(path))}?{query}&uri=true"


def make_storage(name: str, url: str | None = None, root: str | Path = DEFAULT_ROOT, *, create: bool = True,
                 heartbeat: bool = False, read_only: bool = False):
    """The Optuna storage for study ``name``: the default SQLite file, an RDB URL, or a journal file
    (``journal:PATH``; nothing else is a journal, whatever its file is called). With ``heartbeat``
    (the processes that run trials), RDB storages get a heartbeat so trials of a dead process on
    another machine are failed and retried. ``read_only`` (commands that only read a study) opens a
    SQLite file read-only and creates no schema: a file without a study is a ``StudyError``."""
    import optuna

    _listen_sqlite_errors()
    if url is None:
        d = study_dir(name, root)
        if create:
            d.mkdir(parents=True, exist_ok=True)
        url = default_storage(name, root)
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        if not url[len("journal:"):]:
            raise StorageError("--storage 'journal:' names no file; allowed: journal:PATH")
        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
    if "://" not in url:
        raise StorageError(f"--storage must be an Optuna storage URL (sqlite:///..., postgresql://..., "
                           f"mysql://...) or journal:PATH, got {_shown(url)}")
    url = _rdb_url(url)
    read_only = read_only and url.startswith("sqlite")
    if read_only:
        url = _read_only_sqlite(url)
        _check_has_study(url, name)
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beat = {}
                if heartbeat:  # stale trials are failed and retried by recover_dead_trials, not a callback
                    every = heartbeat_interval()
                    beat = dict(heartbeat_interval=every, grace_period=HEARTBEAT_MISSES * every)
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
                    skip_table_creation=read_only, **beat)
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
    return storage


def _check_has_study(url: str, name: str) -> None:
    """Refuse a SQLite file that holds no Optuna study (empty, or another program's database) before
    Optuna would write its schema into it."""
    import sqlalchemy

    from .study import StudyError

    path = _sqlite_path(sqlalchemy.engine.make_url(url))
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


def heartbeat_on(study) -> bool:
    """Whether ``study``'s storage notices a dead process on another machine (an RDB storage opened
    with ``heartbeat``; Optuna's stale-trial query is private, so its presence is checked too)."""
    storage = study._storage
    try:
        from optuna.storages._heartbeat import is_heartbeat_enabled
    except ImportError:  # a future Optuna without it: the pid check still covers one machine
        return False
    return is_heartbeat_enabled(storage) and hasattr(storage, "_get_stale_trial_ids")


def _stale_trial_ids(study) -> set[int]:
    """Trials whose heartbeat stopped, by trial id."""
    return set(study._storage._get_stale_trial_ids(study._study_id)) if heartbeat_on(study) else set()


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
        return study
    try:
        return optuna.load_study(study_name=name, storage=st, sampler=sampler)
    except KeyError:
        raise StudyError(f"no study named {name!r} in storage {_shown(storage or default_storage(name, root))}") from None


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


# --- who runs a trial, and recovering the trials of dead processes -----------------------------------
def owner_attrs() -> dict[str, Any]:
    """Who runs a trial: lets a rerun on the same host tell a dead owner from a live one."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _attempts(trial, by_number: dict) -> int:
    """How many times this design has been tried in this chain: 1 + the retries through ``retry_of``."""
    n, seen = 1, {trial.number}
    prev = trial.user_attrs.get("retry_of")
    while isinstance(prev, int) and prev in by_number and prev not in seen:
        n, seen = n + 1, seen | {prev}
        prev = by_number[prev].user_attrs.get("retry_of")
    return n


def _why_dead(t, host: str, now, grace_s: float, stale: set[int]) -> str | None:
    """Why the RUNNING trial ``t`` is dead, or None while its owner may still be working on it."""
    owner_host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
    if t._trial_id in stale:
        silent = HEARTBEAT_MISSES * heartbeat_interval()
        return f"process {pid} on {owner_host} stopped its heartbeat (none for {silent} s): its machine or process is gone"
    if owner_host is None and pid is None:
        # Its process died between ask and recording its owner; a live one records it within moments.
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        return f"its process died before recording its host and pid (no owner after {age:.0f} s)" \
            if age > grace_s else None
    if owner_host != host or not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
        return None
    return f"process {pid} on {host} died"


def recover_dead_trials(study, grace_s: float = OWNERLESS_GRACE_S) -> list[int]:
    """Fail the RUNNING trials whose owner process on this host is gone, those whose heartbeat
    stopped (a process on another machine), and those that have had no owner for ``grace_s`` seconds; enqueue their parameters again so the next ask retries them, at
    most ``MAX_RETRIES`` times per design (a design whose process is killed every time, e.g. by the
    OOM killer, must not block the study). Cheap when nothing died: one query of the RUNNING
    trials. Returns the numbers of the trials failed."""
    import datetime

    import optuna

    from .study import Status

    host, now, failed, by_number = socket.gethostname(), datetime.datetime.now(), [], None
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    stale = _stale_trial_ids(study) if running else set()
    for t in running:
        reason = _why_dead(t, host, now, grace_s, stale)
        if reason is None:
            continue
        if by_number is None:
            by_number = {x.number: x for x in study.get_trials(deepcopy=False)}
        attempts = _attempts(t, by_number)
        retry = attempts <= MAX_RETRIES
        if not retry:
            reason += f"; not retried again: this design was tried {attempts} times and died each time"
        storage = study._storage  # no public API fails another process's trial; Optuna's own
        try:
            storage.set_trial_user_attr(t._trial_id, "reason", reason)
            storage.set_trial_user_attr(t._trial_id, "status", Status.FAILED.value)
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first and enqueued the retry
        if retry:
            # A trial that died right after ask has no params yet: its enqueued ones, if it had any.
            study.enqueue_trial(t.params or t.system_attrs.get("fixed_params", {}), user_attrs={"retry_of": t.number})
        failed.append(t.number)
    return failed
