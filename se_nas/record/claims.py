"""Which process owns a running trial, and what happens when it dies: owners, claims, heartbeats and
the recovery of dead processes' trials, through Optuna's public storage API only.

A trial of a dead process is failed only on evidence: its pid gone on this host (a live pid here is
never declared dead), no owner recorded after a grace period, or, for a process on another machine,
a heartbeat unchanged for four beats. It is failed with a reason naming the process and host, and
retried, at most ``MAX_RETRIES`` times per design (``se_nas.record.retries``). The heartbeat is the
trial's ``beat`` user attribute, written every ``SE_NAS_HEARTBEAT_S`` seconds (default 60) on any
storage. Processes sharing a study recover, count and ask under one claim lock (``claim``), so a
re-queued trial is taken once and the study ends with exactly the trials asked for.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
import weakref
from typing import Any

from .retries import LOST, requeue, why_not_retried
from .storage import HEARTBEAT_MISSES, heartbeat_interval, storage_of, trial_id, url_of

OWNERLESS_GRACE_S = 120.0  # a RUNNING trial with no host/pid this long after its start is dead


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


def _lock_of(storage) -> tuple[str | None, str | None]:
    """("file", path) next to a SQLite or journal file, (dialect, None) on PostgreSQL or MySQL, else
    (None, None): from the URL ``make_storage`` opened ``storage`` with."""
    if storage not in _LOCKS:
        url = url_of(storage) or ""
        _LOCKS[storage] = (None, None)
        if url.startswith("journal:"):
            _LOCKS[storage] = ("file", url[len("journal:"):] + ".claims")
        elif "://" in url:
            from sqlalchemy.engine import make_url

            u = make_url(url)
            if u.get_backend_name() == "sqlite":
                if u.database and u.database != ":memory:":
                    _LOCKS[storage] = ("file", u.database + ".claims")
            elif u.get_backend_name() in ("postgresql", "mysql", "mariadb"):
                _LOCKS[storage] = (u.get_backend_name(), None)
    return _LOCKS[storage]


@contextlib.contextmanager
def claim(study):
    """Hold ``study``'s claim lock (see above) for the block; re-entrant within a process."""
    st = storage_of(study)
    kind, path = _lock_of(st)
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
        self._st, self._id = storage_of(study), trial_id(study, number)
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
            tid = trial_id(study, t.number)
            try:
                storage.set_trial_user_attr(tid, LOST, True)
                storage.set_trial_user_attr(tid, "status", Status.FAILED.value)
                storage.set_trial_user_attr(tid, "reason", f"{reason}; {why_not}" if why_not else reason)
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
