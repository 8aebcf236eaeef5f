"""SQLite study files and the filesystem under them: a full disk, a read-only mount or a file where a
folder should be is told as an ``OSError`` naming ``study.db`` (SQLite itself says "disk I/O error" or
"unable to open"), and commands that only read a study open it read-only.
"""
from __future__ import annotations

import errno
import os


def sqlite_path(url) -> str | None:
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
    path = sqlite_path(engine.url)
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


def listen_sqlite_errors() -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "handle_error", _sqlite_error):
        event.listen(Engine, "handle_error", _sqlite_error)


def read_only_sqlite(url: str) -> str:
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
    path = sqlite_path(u)
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
