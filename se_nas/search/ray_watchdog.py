"""A watchdog that ends a local Ray with the search process that started it, even on SIGKILL.

Ray ties its own daemons to the process that starts it (Linux ``PR_SET_PDEATHSIG``): gcs_server,
raylet, monitor, log monitor and dashboard die with the driver, and the workers with the raylet. The
raylet's own children, ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``, do not: they notice the
raylet is gone within a few seconds, but since it died by SIGKILL they first try to tell the (dead)
GCS, which Ray bounds by a fixed 60 s timeout (``publish_error_to_driver``), so they outlive a
SIGKILLed search by about a minute (measured with Ray 2.60). Ray offers no public switch for this.

``se_nas.search.ray_backend.connect`` therefore starts this script beside a local Ray it starts. It reads
a pipe whose only writer is the search process: end of file means the search has ended, however.
Meanwhile it notes every few seconds the Ray processes the search started (its children run from
Ray's install folder, and all their descendants), each with its start time; at the end it SIGKILLs
those still running with the same start time (never a later process that reuses a pid). Linux only
(``/proc``), as Ray's own fate sharing. Standard library only: it runs as a plain script, without
importing se-nas, torch or Ray.
"""
from __future__ import annotations

import os
import select
import signal
import sys

POLL_S = 2.0  # how often the Ray processes of the search are listed again while it runs
_PIPES: list[int] = []  # the write ends of the watchdogs' pipes, open while this process lives


def start(ray_dir) -> None:
    """Watch the local Ray this process has just started (Ray installed in ``ray_dir``), so that
    none of its processes outlives this one, even if it is SIGKILLed."""
    import subprocess
    from pathlib import Path

    if not Path("/proc/self/stat").exists():
        return  # not Linux: no /proc to find the processes by (nor Ray's own fate sharing)
    read, write = os.pipe()  # neither end is inherited by Ray's later processes (close-on-exec)
    subprocess.Popen([sys.executable, str(Path(__file__)), str(os.getpid()), str(ray_dir)], stdin=read,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    os.close(read)
    _PIPES.append(write)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name, in (...), may hold spaces
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def _args(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _program(pid: int) -> str:
    return _args(pid)[0] if _args(pid) else ""


def _runs_from(pid: int, folder: str) -> bool:
    """Whether ``pid``'s program or script (its first three arguments) lies in ``folder``."""
    return pid != os.getpid() and any(a.startswith(folder) for a in _args(pid)[:3])


def ray_processes(driver: int, ray_dir: str) -> dict[int, int]:
    """pid -> start time of the processes Ray started for ``driver``: its children whose command
    runs from ``ray_dir`` (Ray's install folder), and all their descendants."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            children.setdefault(st[0], []).append(int(name))
            started[int(name)] = st[1]
    todo = [p for p in children.get(driver, []) if _runs_from(p, ray_dir)]
    found: dict[int, int] = {}
    while todo:
        pid = todo.pop()
        if pid not in found and pid in started:
            found[pid] = started[pid]
            todo.extend(children.get(pid, []))
    return found


def _raylet_of(pid: int) -> int | None:
    """The raylet a Ray worker or agent belongs to (Ray sets ``RAY_RAYLET_PID`` in their
    environment); None for any other process, or one of another user."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return None
    for e in env:
        if e.startswith(b"RAY_RAYLET_PID=") and e[15:].isdigit():
            return int(e[15:])
    return None


def watch(driver: int, ray_dir: str, pipe: int) -> None:
    """Until ``pipe`` reaches end of file, note the Ray processes of ``driver``; then end them, and
    every worker or agent of its raylets (one that started since the last look, too)."""
    known: dict[int, int] = {}
    raylets: set[int] = set()
    while True:
        found = ray_processes(driver, ray_dir)
        raylets |= {pid for pid in found if pid not in known and _program(pid).endswith("/raylet")}
        known.update(found)
        ready, _, _ = select.select([pipe], [], [], POLL_S)
        if ready and not os.read(pipe, 4096):
            break
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) not in known and _raylet_of(int(pid)) in raylets:
            known[int(pid)] = (_stat(int(pid)) or (0, -1))[1]
    for pid, start in known.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the terminal is the search's to handle
    watch(int(sys.argv[1]), sys.argv[2], sys.stdin.fileno())
