"""Writing files safely, and saying in one line what is wrong with a path.

Every file se-nas writes whole (model files, compare.json, latency tables, checkpoints, report
files) goes through ``atomic_write``: a temporary file created with ``O_CREAT|O_EXCL`` under an
unpredictable name in the target's folder (``tempfile.mkstemp``), so a symbolic link planted at a
guessable temporary name is never followed; it is written, flushed to disk, then renamed over the
target, so a reader sees the old file or the new one, never half of one. A target that is itself a
symbolic link is refused rather than replaced or written through: se-nas writes only where it was
told. Standard library only: every layer may import it.
"""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

from ..errors import SeNasError


class UnsafePathError(SeNasError):
    """A path se-nas will not write to (a symbolic link); the message names it and what to do."""


Data = Union[bytes, str, Callable[[BinaryIO], None]]

# What an errno means to someone who named a path, in words (the rest: the system's own words).
_WHAT = {
    errno.ENOSPC: "disk full: free some space and rerun",
    errno.EDQUOT: "disk quota exceeded: free some space and rerun",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of it is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "it already exists and is not a folder",
    errno.ENAMETOOLONG: "name too long",
    errno.EIO: "input/output error (a failing disk or a lost network mount)",
}


def os_error_line(e: OSError) -> str:
    """One line for a filesystem error: the path (shortened) and what is wrong with it."""
    what = _WHAT.get(e.errno) or e.strerror or str(e)
    path = e.filename if e.filename is not None else e.filename2
    if path is None:
        return what
    shown = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    if len(shown) > 200:
        shown = shown[:97] + "..." + shown[-100:]
    return f"{shown!r}: {what}"


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux), so no other
    thread ever sees a umask of 0."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def refuse_link(path: str | Path, what: str = "file") -> None:
    """Refuse a target that is a symbolic link: se-nas neither follows it nor silently replaces it."""
    p = Path(path)
    if p.is_symlink():
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        raise UnsafePathError(f"{str(p)!r} is a symbolic link (to {target[:200]!r}); se-nas does not write a {what} "
                              "through a link: remove the link, or name a real path")


def check_output_file(path: str | Path) -> Path:
    """Refuse, before any work is done, an output file path se-nas could not write: a folder, a
    symbolic link, or one whose folder is a file. Creates nothing."""
    p = Path(path)
    refuse_link(p)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(p))
    for parent in p.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
            break
    return p


def output_folder(path: str | Path) -> Path:
    """Create (if missing) the folder se-nas writes a study's products into, refusing a symbolic link
    there: a link planted at reports/STUDY would send the files elsewhere while se-nas says it wrote
    reports/STUDY/. The parent folders (--out) are the user's and may be links."""
    p = Path(path)
    refuse_link(p, "report")
    p.mkdir(parents=True, exist_ok=True)
    refuse_link(p, "report")  # created as a link between the check and mkdir: still refused
    return p


def atomic_write(path: str | Path, data: Data) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path``
    atomically: see the module docstring. The file gets the mode ``open()`` would give it (0666
    less the umask). On any failure the temporary file is removed and an ``OSError`` names ``path``."""
    p = Path(path)
    refuse_link(p)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(p))
    try:
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    except OSError as e:
        if e.filename is None or e.errno in (errno.ENOSPC, errno.EDQUOT):
            e.filename = str(p)
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and (e.filename is None or e.filename == tmp):
            e.filename = str(p)  # write() errors name no file: name the one the user asked for
        raise
    return p
