"""Training on this machine's cores: a fixed pool of worker processes (``--workers N``).

The search process keeps the study and the sampler; the pool only trains. A job is a function, its
arguments and the recipe whose data it trains on; each worker process loads that data once, trains
on one torch thread and sends back the result, a progress line now and then, or the error. So what
is trained, and with which seed, is decided in the search process alone, and a result does not
depend on which worker trained it or when (``se_nas.search.optuna_backend``'s window makes the
search's answer depend on the seed and the worker count only).

Workers never outlive their search: each dies with its parent, even when the parent is SIGKILLed or
taken by the OOM killer (Linux's ``PR_SET_PDEATHSIG``, and a thread that watches the parent pid
everywhere). A worker that dies (e.g. the OOM killer) is replaced; its job is reported as
``died`` so the caller can retry it under the one retry rule (``se_nas.record.retries``).
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

PARENT_POLL_S = 1.0  # how often a worker checks that its search process is still there
PROGRESS_EVERY_S = 0.5  # a worker sends at most this many progress lines per second, per job
MAX_REPLACEMENTS = 3  # workers started to replace dead ones, per slot (a poison design kills a few)


def die_with_parent(parent: int) -> None:
    """SIGTERM this process when its parent ``parent`` dies, even by SIGKILL or the OOM killer:
    Linux's PR_SET_PDEATHSIG where there is one, and a thread that watches the parent pid everywhere
    (also covering a parent that died before the prctl call)."""
    import ctypes
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watch below still stops it

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="se-nas-parent-watch", daemon=True).start()


def _serve(conn, parent: int) -> None:
    """A worker process: run jobs from ``conn`` until it closes, sending back ("progress", ticket,
    line), ("done", ticket, result) or ("error", ticket, line, traceback)."""
    import json
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the search's: it stops the workers
    die_with_parent(parent)
    from ..nn.data import load_data
    from .trial import configure_threads

    configure_threads(1)
    data = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        ticket, fn, args, recipe = msg
        key = json.dumps(recipe.to_dict(), sort_keys=True, default=str)
        last = [0.0]

        def on_progress(p, ticket=ticket, last=last):
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_S:
                last[0] = now
                conn.send(("progress", ticket, str(p)))

        try:
            if key not in data:
                data[key] = load_data(recipe)
            result = fn(*args, data=data[key], on_progress=on_progress)
        except Exception as e:
            conn.send(("error", ticket, f"{type(e).__name__}: {e}", traceback.format_exc()))
        else:
            conn.send(("done", ticket, result))


@dataclass
class Event:
    """What the pool has to say about job ``ticket``: ``kind`` is "started" (``value``: the pid of the
    worker process that took it), "progress" (``value``: a line),
    "done" (``value``: the job's result), "error" (``value``: the error's line, ``detail``: its
    traceback) or "died" (``value``: why, e.g. the worker's exit code)."""

    ticket: int
    kind: str
    value: Any = None
    detail: str = ""


class Pool:
    """``workers`` spawned processes that train jobs (``submit``) and report them (``next``)."""

    def __init__(self, workers: int):
        import multiprocessing as mp

        self.workers = workers
        self._ctx = mp.get_context("spawn")
        self._queue: deque = deque()  # (ticket, job) not started yet
        self._busy: dict[int, int] = {}  # slot -> ticket running there
        self._started: deque = deque()  # "started" events not yet returned by next()
        self._jobs: dict[int, tuple] = {}
        self._tickets = 0
        self._replaced = 0
        self._slots = [self._start() for _ in range(workers)]

    def _start(self):
        parent, child = self._ctx.Pipe()
        p = self._ctx.Process(target=_serve, args=(child, os.getpid()), daemon=True, name="se-nas-worker")
        p.start()
        child.close()
        return p, parent

    def submit(self, fn: Callable, args: tuple, recipe) -> int:
        """Train ``fn(*args, data=<recipe's data>, on_progress=...)`` in a worker; returns its ticket."""
        self._tickets += 1
        self._jobs[self._tickets] = (fn, args, recipe)
        self._queue.append(self._tickets)
        self._dispatch()
        return self._tickets

    def _dispatch(self) -> None:
        for slot in range(len(self._slots)):
            if not self._queue:
                return
            if slot not in self._busy:
                ticket = self._queue.popleft()
                self._busy[slot] = ticket
                self._slots[slot][1].send((ticket, *self._jobs[ticket]))
                self._started.append(Event(ticket, "started", self._slots[slot][0].pid))

    def next(self) -> Event:
        """The next event of a submitted job (blocks until there is one)."""
        from multiprocessing.connection import wait

        if self._started:
            return self._started.popleft()
        if not self._busy:
            raise RuntimeError("no job is running in the pool")
        while True:
            conns = {self._slots[s][1]: s for s in self._busy}
            sentinels = {self._slots[s][0].sentinel: s for s in self._busy}
            ready = wait([*conns, *sentinels])
            for r in ready:
                if r in conns:
                    slot = conns[r]
                    try:
                        msg = r.recv()
                    except (EOFError, OSError):
                        continue  # the worker died: its sentinel says so
                    if msg[0] != "progress":
                        del self._busy[slot]
                        del self._jobs[msg[1]]
                        self._dispatch()
                    return Event(msg[1], msg[0], *msg[2:])
            for r in ready:
                if r in sentinels:
                    return self._died(sentinels[r])

    def _died(self, slot: int) -> Event:
        proc, conn = self._slots[slot]
        proc.join()
        conn.close()
        ticket = self._busy.pop(slot)
        del self._jobs[ticket]
        if self._replaced >= MAX_REPLACEMENTS * self.workers:
            raise RuntimeError(f"{self._replaced} worker processes died and were replaced; stopping "
                               f"(the last: exit code {proc.exitcode})")
        self._replaced += 1
        self._slots[slot] = self._start()
        self._dispatch()
        return Event(ticket, "died", f"its worker process {proc.pid} died (exit code {proc.exitcode})")

    def runner(self, todo, recipe, live: Callable[[str], None] | None = None) -> Iterator:
        """``se_nas.search.confirm.ensure_runs``'s runner: the ``(arch, seed)`` runs of ``todo`` under
        ``recipe`` across the workers, each ``Run`` yielded as it finishes (``live`` gets their
        progress lines). A run whose worker died is tried again, at most ``MAX_RETRIES`` times, then
        yielded as a failed run."""
        from ..record.retries import MAX_RETRIES
        from .confirm import Run, train_run

        def submit(arch, seed):
            return self.submit(train_run, (arch, recipe, seed), recipe)

        tickets = {submit(arch, seed): (arch, seed) for arch, seed in todo}
        deaths: dict[tuple[str, int], int] = {}
        while tickets:
            ev = self.next()
            if ev.kind == "started":
                continue
            if ev.kind == "progress":
                if live is not None:
                    arch, seed = tickets[ev.ticket]
                    live(f"{arch.id} s{seed} {ev.value}")
                continue
            arch, seed = tickets.pop(ev.ticket)
            if ev.kind == "done":
                yield ev.value
            elif ev.kind == "died":
                n = deaths[(arch.id, seed)] = deaths.get((arch.id, seed), 0) + 1
                if n <= MAX_RETRIES:
                    tickets[submit(arch, seed)] = (arch, seed)
                else:
                    yield Run(arch, seed, None, (), 0.0, f"{ev.value}, {n} times")
            else:
                raise RuntimeError(f"training {arch.id} seed {seed} failed in a worker process: {ev.value}\n{ev.detail}")

    def close(self) -> None:
        """Stop the workers (at once: a job in flight is abandoned)."""
        for proc, conn in self._slots:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        for proc, _ in self._slots:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._slots = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
