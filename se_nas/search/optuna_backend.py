"""The Optuna backend: trials run in this process, or in ``workers`` processes on one storage.

Each process asks its own sampler (``se_nas.record.samplers.process_seed``) for a design, decides whether
it needs training (``se_nas.search.trial.repeat_outcome``: a design already trained is answered from its
record unless another seed is worth it), trains it with the one trial function and records the
outcome. Ctrl-C or SIGTERM fails the trial in flight as "interrupted" and enqueues it for the next
run; before each trial, every process fails and enqueues again the trials of dead processes
(``se_nas.record.claims.recover_dead_trials``).
"""
from __future__ import annotations

import socket
import time
import warnings
from typing import Callable

from ..design.cost import count_cost
from .earlystop import RungStopper, peers_of
from ..record.samplers import make_sampler, process_seed, quiet_optuna
from ..record.retries import poison_outcome, requeue
from ..record.storage import open_study
from ..record.claims import Heartbeat, claim, join_search, owner_attrs, recover_dead_trials
from ..record.study import SearchError, Status, counted, records, remaining
from .trial import REPEAT_STREAK, configure_threads, propose_fresh, record_outcome, repeat_outcome, run_trial


def _context(study, config, exclude: int):
    """Peers and noise for the rung rule, read from the study at each rung (other workers' trials count)."""
    from .confirm import study_noise

    def context():
        recs = records(study)
        return peers_of(recs, exclude=exclude), study_noise(study, config.recipe, recs)

    return context


def ask(study):
    """A trial of ``study`` for this process, its owner (host and pid) recorded. Under the study's
    claim, so a re-queued (WAITING) trial goes to one process only (SQLite ignores the row lock
    Optuna relies on); ``_worker`` counts the trials left under the same claim."""
    import optuna

    with claim(study), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trial = study.ask()
        for k, v in owner_attrs().items():
            trial.set_user_attr(k, v)
    return trial


def _taken(study, number: int, why: str):
    """The FrozenTrial ``number`` if another process has finished it (failed it as dead while it ran
    here, e.g. after this process was paused), else None. Says so in one line: this process's result
    is dropped and the retry enqueued by that process trains the design again."""
    import sys

    t = study.get_trials(deepcopy=False)[number]
    if not t.state.is_finished():
        return None
    print(f"#{number}: another process failed this trial while it ran here ({t.user_attrs.get('reason') or 'no reason'}); "
          f"its result here is dropped ({why}); going on", file=sys.stderr, flush=True)
    return t


def run_one(study, config, data=None, device=None, live=None, trial=None):
    """Run one candidate (``trial``, or one asked now), or answer it from the record; record it;
    returns the FrozenTrial.

    On Ctrl-C the trial is failed as "interrupted" and enqueued again, then the interrupt goes on.
    """
    import optuna

    from .confirm import study_noise

    trial = ask(study) if trial is None else trial
    try:
        _stop_now_if_asked()  # a SIGTERM that came while the trial was being asked stops it here
        with Heartbeat(study, trial.number):
            arch = config.space.sample(trial)
            trial.set_user_attr("arch", arch.to_json())
            seed = config.seed + trial.number
            recs = records(study)
            outcome = repeat_outcome(arch, recs, study_noise(study, config.recipe, recs), seed=seed,
                                     max_seeds=config.max_seeds_per_design, exclude=trial.number,
                                     objectives=config.objectives)
            if outcome is None:
                cost = count_cost(arch, config.deploy.image_size, config.deploy.num_classes)
                outcome = poison_outcome(arch, study.get_trials(deepcopy=False), cost, seed=seed)
            if outcome is None:
                stopper = None
                if config.early_stop == "rungs" and config.recipe.rungs:
                    stopper = RungStopper(config.recipe.rungs, cost.gflops, cost.mparams,
                                          _context(study, config, trial.number))
                on_progress = None if live is None else (lambda p: live(f"#{trial.number} {arch.id} {p}"))
                outcome = run_trial(arch, config.recipe, config.budget, config.deploy, seed=seed, data=data,
                                    should_stop=stopper, device=device, on_progress=on_progress)
            try:
                return record_outcome(study, trial, outcome, budget=config.budget)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
                taken = _taken(study, trial.number, outcome.status.value + (
                    f", accuracy {outcome.accuracy:.4f}" if outcome.accuracy is not None else ""))
                if taken is None:
                    raise
                return taken
    except KeyboardInterrupt:
        try:
            trial.set_user_attr("status", Status.INTERRUPTED.value)
            trial.set_user_attr("reason", "interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            raise KeyboardInterrupt from None  # already failed by another process, which retries it
        requeue(study, trial.params, trial.number)
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        taken = _taken(study, trial.number, "not finished")
        if taken is None:
            raise
        return taken
    except BaseException as e:  # a bug, not a training failure: record it, then let it surface
        try:
            trial.set_user_attr("status", Status.FAILED.value)
            trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            pass
        raise


WAIT_S = 1.0  # how often a process with nothing left to start looks at the others' last trials


def _wait_for_others(study) -> bool:
    """Whether this process, with no trial left to start, should stay: while another process's trial
    runs, so that if it dies (its pid gone here, or its heartbeat stopped on another host) its trial
    is retried here and the study ends with the number of trials asked for."""
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _next_trial(study, n_trials: int):
    """(trials of dead processes failed now, this process's next trial or None when none is left to
    start): recovering, counting and asking under one claim, so the study ends with exactly
    ``n_trials`` counted trials however many processes search it."""
    with claim(study):
        lost = recover_dead_trials(study)
        stopping = _STOP["asked"]  # a SIGTERM came meanwhile: start nothing (the trial it would pop waits)
        return lost, (ask(study) if not stopping and remaining(study, n_trials) > 0 else None)


def _worker(config, index: int, on_done: Callable | None = None, data=None, live=None,
            others: int | None = None) -> None:
    """One search process: its own sampler, the shared storage, the loaded data. ``others``: live
    search processes besides this search on the study (None: register and count them here)."""
    from ..nn.data import load_data

    quiet_optuna()
    configure_threads(config.workers)
    study = open_study(config.study, storage=config.storage, root=config.root, heartbeat=True)
    if others is None:
        others = join_search(study)
    study.sampler = make_sampler(config.sampler, process_seed(config.seed, index, counted(study)[0] + index,
                                                              shared=config.storage is not None, others=others))
    if data is None:
        data = load_data(config.recipe)
    streak = 0
    while True:
        # Before counting: a trial of a process that died since (beside us, on another machine, or a
        # killed rerun) is failed and retried here, and shown like any finished trial ("failed: why").
        _STOP["defer"] = True  # until run_one holds the trial: a stop in between would orphan it
        lost, trial = _next_trial(study, config.n_trials)
        if trial is None:
            _stop_now_if_asked()
        for number in lost:
            if on_done is not None:
                on_done(study.trials[number])
        if trial is None:
            if not _wait_for_others(study):
                break
            if live is not None:
                live("nothing left to start: waiting for the other processes' trials (one that dies is retried here)")
            time.sleep(WAIT_S)
            continue
        frozen = run_one(study, config, data=data, live=live, trial=trial)
        if on_done is not None:
            on_done(frozen)
        streak = streak + 1 if frozen.user_attrs.get("status") == Status.REPEAT.value else 0
        if streak >= REPEAT_STREAK:
            if not propose_fresh(study, config.space, config.seed + frozen.number):
                break  # every design of the space is known: nothing new to learn
            streak = 0


# --- worker processes: bounded, and never outliving their search --------------------------------------
PARENT_POLL_S = 1.0  # how often a worker checks that its search process is still there


def _die_with_parent(parent: int) -> None:
    """Stop this worker (SIGTERM: its trial in flight is failed as interrupted and enqueued) when its
    search process dies, even by SIGKILL or the OOM killer: Linux's PR_SET_PDEATHSIG where there is
    one, and a thread that watches the parent pid everywhere (also covers a parent that died before
    the prctl call)."""
    import ctypes
    import os
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        try:
            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still stops it

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="se-nas-parent-watch", daemon=True).start()


_STOP = {"defer": False, "asked": False}  # a worker's SIGTERM while it asks for a trial waits for run_one


def _stop_now_if_asked() -> None:
    _STOP["defer"] = False
    if _STOP["asked"]:
        raise KeyboardInterrupt


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (kill, timeout, systemd, the parent's death) ends a worker like Ctrl-C: the trial in
    flight is failed and enqueued, nothing is left half-written. Only the first one: the parent's
    death sends two (PR_SET_PDEATHSIG, then the watch), and a second must not cut the first short;
    and while the worker asks for a trial, the stop waits until run_one holds it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _STOP["asked"] = True
    if not _STOP["defer"]:
        raise KeyboardInterrupt


def _spawned_worker(config, index: int, parent: int, others: int) -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _die_with_parent(parent)
        _worker(config, index, others=others)
    except KeyboardInterrupt:
        pass  # the trial in flight is already failed and enqueued; the parent reports


def run(study, config, progress, data) -> None:
    """Run trials until the study has ``config.n_trials`` counted ones."""
    if config.workers == 1:
        _worker(config, 0, on_done=progress.trial_done, data=data, live=progress.live)
    else:
        _run_processes(study, config, progress)


def worker_count(requested: int, trials_left: int, cores: int) -> tuple[int, str | None]:
    """``requested`` workers, clamped to the cores this process may use and the trials left to start
    (at least 1), and the one line saying so when clamped (None when not)."""
    n = max(1, min(requested, cores, max(trials_left, 1)))
    if n == requested:
        return n, None
    why = f"{cores} core{'s' if cores != 1 else ''} this process may use" if n == cores else \
        f"{trials_left} trial{'s' if trials_left != 1 else ''} left to start"
    return n, f"--workers {requested}: using {n} worker process{'es' if n != 1 else ''} ({why})"


MAX_REPLACEMENTS = 3  # workers started to replace dead ones, per worker slot (a poison design kills a few)


def _run_processes(study, config, progress) -> None:
    """``workers`` spawned processes on the same storage; this one reports their trials as they end,
    and replaces a worker that died (e.g. killed by the OOM killer) while trials remain."""
    import multiprocessing as mp
    import os

    ctx = mp.get_context("spawn")
    others = join_search(study)

    def start(i):
        p = ctx.Process(target=_spawned_worker, args=(config, i, os.getpid(), others), daemon=False)
        p.start()
        return p

    procs = [start(i) for i in range(config.workers)]
    seen, replaced = set(), set()
    try:
        while True:
            progress.poll()
            for p in list(procs):
                if p.pid in seen or p.is_alive() or p.exitcode in (0, None):
                    continue
                seen.add(p.pid)
                recover_dead_trials(study)  # its trial is retried (and this process counts it as left)
                if len(replaced) < MAX_REPLACEMENTS * config.workers and remaining(study, config.n_trials) > 0:
                    progress.log(f"worker process {p.pid} died (exit code {p.exitcode}); its trial is retried and "
                                 "a new worker process takes its place")
                    replaced.add(p.pid)
                    procs.append(start(len(procs)))
            if not any(p.is_alive() for p in procs):
                break
            time.sleep(1.0)
        progress.poll()
    except BaseException:
        for p in procs:  # Ctrl-C or SIGTERM of the parent: stop the workers the same way
            if p.is_alive():
                p.terminate()
        raise
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None) and p.pid not in replaced]
    if bad:
        raise SearchError(f"{len(bad)} of {config.workers} worker processes exited with an error "
                          f"(exit codes {bad}); the study keeps every finished trial, rerun to continue")
