"""Where studies live: storage URLs, opening a study, finding the latest one, recovering trials of
dead processes.

The default is one SQLite file per study, ``<root>/<study>/study.db`` (WAL mode). ``--storage``
takes any Optuna RDB URL (PostgreSQL or MySQL for many machines) or ``journal:PATH`` for a journal
file (NFS); only that prefix makes a journal. A URL's database driver is checked before connecting
(PostgreSQL: psycopg 3 from the ``se-nas[postgres]`` extra, or psycopg2), and a missing one is one
line naming the package. Every command that reads a study takes the same ``storage`` argument, so a
study run anywhere can be reported, exported and compared.

A trial of a dead process is failed only on evidence: its pid gone on this host (a live pid here is
never declared dead), no owner recorded after a grace period, or, for a process on another machine,
a heartbeat unchanged for four beats. It is failed with a reason naming the process and host, and
retried, at most ``MAX_RETRIES`` times per design (``se_nas.record.retries``). The heartbeat is the trial's
``beat`` user attribute, written every ``SE_NAS_HEARTBEAT_S`` seconds (default 60) on any storage.
Processes sharing a study recover, count and ask under one claim lock (``claim``), so a re-queued
trial is taken once and the study ends with exactly the trials asked for. Only Optuna's public API
is used (the storage object is the one ``open_study`` made).
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

from ..errors import SeNasError

DEFAULT_ROOT = Path("trials")
from .retries import LOST, MAX_RETRIES, requeue, why_not_retried  # noqa: F401 (MAX_RETRIES: the cap)
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
    (the processes that run trials) the heartbeat setting is checked (``Heartbeat`` beats). ``read_only``
    (commands that only read a study) opens a SQLite file read-only and creates no schema: a file without
    a study is a ``StudyError``."""
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
        if heartbeat:
            heartbeat_interval()
        journal = optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):]))
        _register_lock(journal, url)
        return journal
    if "://" not in url:
        raise StorageError(f"--storage must be an Optuna storage URL (sqlite:///..., postgresql://..., "
                           f"mysql://...) or journal:PATH, got {_shown(url)}")
    url = _rdb_url(url)
    if heartbeat:
        heartbeat_interval()  # a bad SE_NAS_HEARTBEAT_S is one line before anything runs
    read_only = read_only and url.startswith("sqlite")
    if read_only:
        url = _read_only_sqlite(url)
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
    _register_lock(storage, url)
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


def storage_of(study):
    """The storage ``study`` was opened on by ``open_study``."""
    try:
        return _OPENED[study]
    except KeyError:
        raise StorageError(f"study {study.study_name!r} was not opened with se_nas.record.storage.open_study: "
                           "open it with open_study to run or recover its trials") from None


def _trial_id(study, number: int) -> int:
    st = storage_of(study)
    return st.get_trial_id_from_study_id_trial_number(st.get_study_id_from_name(study.study_name), number)


def _known_studies(root: str | Path) -> str:
    names = sorted(p.parent.name for p in Path(root).glob("*/study.db"))
    return f"; studies here: {', '.join(names)}" if names else ""


def latest_study(root: str | Path = DEFAULT_ROOT, storage: str | None = None) -> str:
    """The most recently modified study under ``root`` (the default STUDY of report/export/compare),
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


# --- claims: one process at a time recovers, counts and asks ------------------------------------------
# SQLite ignores the row lock Optuna's ask relies on to pop a WAITING trial (SELECT ... FOR UPDATE), so
# two processes could both take one re-queued trial; and counting the trials left, then asking, is two
# steps another process can interleave (one trial too many). Both happen under one lock per study: a
# file lock next to a SQLite or journal file (released by the kernel if its process dies), an advisory
# lock on PostgreSQL and MySQL (released with the connection).
_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # storage -> ("file", path) | (dialect, None)
_HELD: set = set()  # claims this process holds (a claim inside a claim is the same claim)


def _register_lock(storage, url: str) -> None:
    if url.startswith("journal:"):
        _LOCKS[storage] = ("file", url[len("journal:"):] + ".claims")
        return
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            _LOCKS[storage] = ("file", u.database + ".claims")
    elif u.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        _LOCKS[storage] = (u.get_backend_name(), None)


@contextlib.contextmanager
def claim(study):
    """Hold ``study``'s claim lock (see above) for the block; re-entrant within a process."""
    st = storage_of(study)
    kind, path = _LOCKS.get(st, (None, None))
    key = (kind, path or study.study_name)
    if kind is None or key in _HELD:
        yield
        return
    _HELD.add(key)
    try:
        if kind == "file":
            with _file_lock(path):
                yield
        else:
            with _db_lock(st, kind, study.study_name):
                yield
    finally:
        _HELD.discard(key)


@contextlib.contextmanager
def _file_lock(path: str):
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _db_lock(storage, kind: str, name: str):
    import zlib

    from sqlalchemy import text

    key = zlib.crc32(f"se-nas claim {name}".encode())
    take, give = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if kind == "postgresql" else
                  ("SELECT GET_LOCK(:n, 600)", "SELECT RELEASE_LOCK(:n)"))
    args = {"k": key, "n": f"se-nas-{key}"}
    with storage.engine.connect() as conn:
        conn.execute(text(take), args)
        try:
            yield
        finally:
            conn.execute(text(give), args)
            conn.rollback()


# --- heartbeat: a running trial says it is alive --------------------------------------------------------
class Heartbeat:
    """While the block runs, write the trial's ``beat`` user attribute (the writer's clock) every
    ``SE_NAS_HEARTBEAT_S`` seconds, from a thread. A failed write (a busy database) is tried again at
    the next beat; the thread never dies of it. Other processes judge a beat by their own clock: a
    trial whose beat has not changed for ``HEARTBEAT_MISSES`` beats, as they saw it, is stale (so
    clocks of different machines need not agree). Public storage API only."""

    def __init__(self, study, number: int):
        self._st, self._id = storage_of(study), _trial_id(study, number)
        self._every = heartbeat_interval()
        self._stop = None

    def beat(self) -> bool:
        import optuna

        try:
            self._st.set_trial_user_attr(self._id, "beat", round(time.time(), 3))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False  # finished (here, or failed by another process): nothing left to beat for
        except Exception:  # e.g. "database is locked" under load: the next beat tries again
            pass
        return True

    def __enter__(self):
        import threading

        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(self._every) and self.beat():
                pass

        self.beat()
        self._thread = threading.Thread(target=loop, name="se-nas-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=1)  # a beat stuck in a busy database must not hold up the trial
        return False


_BEATS_SEEN: dict[tuple[str, int], tuple[Any, float]] = {}  # (study, trial) -> (last beat, when seen here)


def _silent_for(study_name: str, t) -> float:
    """Seconds (this process's monotonic clock) since this process first saw ``t``'s current beat."""
    key, beat, now = (study_name, t.number), t.user_attrs.get("beat"), time.monotonic()
    seen = _BEATS_SEEN.get(key)
    if seen is None or seen[0] != beat:
        _BEATS_SEEN[key] = (beat, now)
        return 0.0
    return now - seen[1]


def _why_dead(study_name: str, t, host: str, now, grace_s: float) -> str | None:
    """Why the RUNNING trial ``t`` is dead, or None while its owner may still be working on it. Only
    evidence counts: its pid gone on this host (a live pid here is alive, whatever its heartbeat),
    its beat unchanged for ``HEARTBEAT_MISSES`` beats (another host), or no owner after ``grace_s``."""
    owner_host, pid = t.user_attrs.get("host"), t.user_attrs.get("pid")
    if owner_host is None and pid is None:
        # Its process died between ask and recording its owner; a live one records it within moments.
        age = (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        return f"its process died before recording its host and pid (no owner after {age:.0f} s)" \
            if age > grace_s else None
    if owner_host == host:
        if not isinstance(pid, int) or pid == os.getpid() or _alive(pid):
            return None
        return f"process {pid} on {host} died"
    if "beat" not in t.user_attrs:  # never beat (a Ray trial, or an older se-nas): no evidence either way
        return None
    silent = HEARTBEAT_MISSES * heartbeat_interval()
    if _silent_for(study_name, t) <= silent:
        return None
    return f"process {pid} on {owner_host} stopped its heartbeat (none for {silent} s): its machine or process is gone"


def recover_dead_trials(study, grace_s: float = OWNERLESS_GRACE_S) -> list[int]:
    """Fail the RUNNING trials whose owner process on this host is gone, those on another host whose
    heartbeat stopped, and those that have had no owner for ``grace_s`` seconds; enqueue their
    parameters again so the next ask retries them, at most ``MAX_RETRIES`` times per design
    (``se_nas.record.retries``: a design whose process is killed every time, e.g. by the OOM killer, must
    not block the study). Runs under the study's claim, so two processes never fail (and retry) one
    trial twice. Cheap when nothing died: one query of the RUNNING trials. Returns the numbers of the
    trials failed."""
    import datetime

    import optuna

    from .study import Status

    host, now, failed = socket.gethostname(), datetime.datetime.now(), []
    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        return failed
    storage = storage_of(study)
    with claim(study):
        trials = None
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            reason = _why_dead(study.study_name, t, host, now, grace_s)
            if reason is None:
                continue
            trials = study.get_trials(deepcopy=False) if trials is None else trials
            why_not = why_not_retried(t, trials)
            trial_id = _trial_id(study, t.number)
            try:
                storage.set_trial_user_attr(trial_id, LOST, True)
                storage.set_trial_user_attr(trial_id, "status", Status.FAILED.value)
                storage.set_trial_user_attr(trial_id, "reason", f"{reason}; {why_not}" if why_not else reason)
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                continue  # it finished meanwhile (its process was alive after all)
            if not why_not:
                # A trial that died right after ask has no params yet: its enqueued ones, if it had any.
                requeue(study, t.params or t.system_attrs.get("fixed_params", {}), t.number)
            failed.append(t.number)
    return failed


# --- search processes sharing a study -----------------------------------------------------------------
def join_search(study) -> int:
    """Register this search process with ``study`` and return how many other live ones share it
    (processes on other hosts count as live). 0 for a search alone on its study, whatever ran on it
    before: its sampler seed stays the one it was given (``se_nas.record.samplers.process_seed``)."""
    host = socket.gethostname()
    with claim(study):
        entries = [e for e in study.user_attrs.get("search_processes", [])
                   if isinstance(e, list) and len(e) == 2 and (e[0] != host or (isinstance(e[1], int) and _alive(e[1])))]
        others = sum(1 for e in entries if e != [host, os.getpid()])
        study.set_user_attr("search_processes", (entries + [[host, os.getpid()]])[-64:])
    return others
