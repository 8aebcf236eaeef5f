"""The Optuna backend: trials run in this process, or in ``workers`` processes on one storage.

Each process asks its own sampler (``se_nas.record.samplers.process_seed``) for a design, decides whether
it needs training (``se_nas.search.trial.repeat_outcome``: a design already trained is answered from its
record unless another seed is worth it), trains it with the one trial function and records the
outcome. Ctrl-C or SIGTERM fails the trial in flight as "interrupted" and enqueues it for the next
run; before each trial, every process fails and enqueues again the trials of dead processes
(``se_nas.record.storage.recover_dead_trials``).
"""
from __future__ import annotations

import socket
import time
import warnings
from typing import Callable

from ..design.cost import count_cost
from .earlystop import RungStopper, peers_of
from ..record.samplers import make_sampler, process_seed, quiet_optuna
from ..record.storage import open_study, owner_attrs, recover_dead_trials
from ..record.study import SearchError, Status, counted, records, remaining
from .trial import REPEAT_STREAK, configure_threads, propose_fresh, record_outcome, repeat_outcome, run_trial


def _heartbeat(study, trial):
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread
    except ImportError:  # a future Optuna without it: the pid check still covers one machine
        import contextlib

        return contextlib.nullcontext()
    return get_heartbeat_thread(trial._trial_id, study._storage)


def _context(study, config, exclude: int):
    """Peers and noise for the rung rule, read from the study at each rung (other workers' trials count)."""
    from .confirm import study_noise

    def context():
        recs = records(study)
        return peers_of(recs, exclude=exclude), study_noise(study, config.recipe, recs)

    return context


def run_one(study, config, data=None, device=None, live=None):
    """Ask for one candidate, run it (or answer it from the record), record it; returns the FrozenTrial.

    On Ctrl-C the trial is failed as "interrupted" and enqueued again, then the interrupt goes on.
    """
    import optuna

    from .confirm import study_noise

    with warnings.catch_warnings():  # stale trials (heartbeat) are recovered by the caller's loop
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        trial = study.ask()
    for k, v in owner_attrs().items():
        trial.set_user_attr(k, v)
    try:
        with _heartbeat(study, trial):
            arch = config.space.sample(trial)
            trial.set_user_attr("arch", arch.to_json())
            seed = config.seed + trial.number
            recs = records(study)
            outcome = repeat_outcome(arch, recs, study_noise(study, config.recipe, recs), seed=seed,
                                     max_seeds=config.max_seeds_per_design, exclude=trial.number,
                                     objectives=config.objectives)
            if outcome is None:
                stopper = None
                if config.early_stop == "rungs" and config.recipe.rungs:
                    cost = count_cost(arch, config.deploy.image_size, config.deploy.num_classes)
                    stopper = RungStopper(config.recipe.rungs, cost.gflops, cost.mparams,
                                          _context(study, config, trial.number))
                on_progress = None if live is None else (lambda p: live(f"#{trial.number} {arch.id} {p}"))
                outcome = run_trial(arch, config.recipe, config.budget, config.deploy, seed=seed, data=data,
                                    should_stop=stopper, device=device, on_progress=on_progress)
            return record_outcome(study, trial, outcome, budget=config.budget)
    except KeyboardInterrupt:
        trial.set_user_attr("status", Status.FAILED.value)
        trial.set_user_attr("reason", "interrupted")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except BaseException as e:  # a bug, not a training failure: record it, then let it surface
        trial.set_user_attr("status", Status.FAILED.value)
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise


WAIT_S = 1.0  # how often a process with nothing left to start looks at the others' last trials


def _wait_for_others(study) -> bool:
    """Whether this process, with no trial left to start, should stay: while another process's trial
    runs and its death could still be noticed here (its pid on this host, or a heartbeat), so that if
    it dies its trial is retried and the study ends with the number of trials asked for."""
    import optuna

    from ..record.storage import heartbeat_on

    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    here = socket.gethostname()
    return bool(running) and (heartbeat_on(study) or all(t.user_attrs.get("host") == here for t in running))


def _worker(config, index: int, on_done: Callable | None = None, data=None, live=None) -> None:
    """One search process: its own sampler, the shared storage, the loaded data."""
    from ..nn.data import load_data

    quiet_optuna()
    configure_threads(config.workers)
    study = open_study(config.study, storage=config.storage, root=config.root, heartbeat=True)
    study.sampler = make_sampler(config.sampler, process_seed(config.seed, index, counted(study)[0] + index,
                                                                    shared=config.storage is not None))
    if data is None:
        data = load_data(config.recipe)
    streak = 0
    while True:
        # Before counting: a trial of a process that died since (beside us, on another machine, or a
        # killed rerun) is failed and retried here, and shown like any finished trial ("failed: why").
        for number in recover_dead_trials(study):
            if on_done is not None:
                on_done(study.trials[number])
        if remaining(study, config.n_trials) <= 0:
            if not _wait_for_others(study):
                break
            if live is not None:
                live("nothing left to start: waiting for the other processes' trials (one that dies is retried here)")
            time.sleep(WAIT_S)
            continue
        frozen = run_one(study, config, data=data, live=live)
        if on_done is not None:
            on_done(frozen)
        streak = streak + 1 if frozen.user_attrs.get("status") == Status.REPEAT.value else 0
        if streak >= REPEAT_STREAK:
            if not propose_fresh(study, config.space, config.seed + frozen.number):
                break  # every design of the space is known: nothing new to learn
            streak = 0


def _spawned_worker(config, index: int) -> None:
    import signal

    # SIGTERM (kill, timeout, systemd) ends a worker like Ctrl-C: the trial in flight is failed and
    # enqueued, nothing is left half-written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _worker(config, index)
    except KeyboardInterrupt:
        pass  # the trial in flight is already failed and enqueued; the parent reports


def run(study, config, progress, data) -> None:
    """Run trials until the study has ``config.n_trials`` counted ones."""
    if config.workers == 1:
        _worker(config, 0, on_done=progress.trial_done, data=data, live=progress.live)
    else:
        _run_processes(config, progress)


def _run_processes(config, progress) -> None:
    """``workers`` spawned processes on the same storage; this one reports their trials as they end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_spawned_worker, args=(config, i), daemon=False) for i in range(config.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            progress.poll()
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
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise SearchError(f"{len(bad)} of {config.workers} worker processes exited with an error "
                          f"(exit codes {bad}); the study keeps every finished trial, rerun to continue")
