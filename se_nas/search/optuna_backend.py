"""The Optuna backend: this process asks the sampler and records every trial; the trainings run here
(``--workers 1``) or across a pool of worker processes (``se_nas.search.pool``).

For each trial the search decides whether it needs training (``se_nas.search.trial.repeat_outcome``:
a design already trained is answered from its record unless another seed is worth it), trains it
with the one trial function and records the outcome, in the order the trials were asked, so the
answer depends on the seed and the worker count only (``search_trials``). Ctrl-C or SIGTERM fails
the trials in flight as "interrupted" and enqueues them for the next run; before each trial the
trials of dead processes (another search on the same study that died) are failed and enqueued again
(``se_nas.record.claims.recover_dead_trials``).
"""
from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from ..design.cost import count_cost
from .earlystop import RungStopper, Seen, peers_of
from ..record.retries import poison_outcome, requeue
from ..record.claims import Heartbeat, claim, owner_attrs, recover_dead_trials
from ..record.study import Status, records, remaining
from .trial import REPEAT_STREAK, propose_fresh, record_outcome, repeat_outcome, run_trial


def ask(study, beat: bool = False):
    """A trial of ``study`` for this process, its owner (host and pid) recorded. Under the study's
    claim, so a re-queued (WAITING) trial goes to one process only (SQLite ignores the row lock
    Optuna relies on); ``_next_trial`` counts the trials left under the same claim."""
    import optuna

    with claim(study), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        trial = study.ask()
        for k, v in owner_attrs().items():
            trial.set_user_attr(k, v)
        if beat:  # its first heartbeat with its owner: a process killed right after the ask leaves evidence
            trial.set_user_attr("beat", round(time.time(), 3))
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


@dataclass
class PendingTrial:
    """A trial asked and not yet told: its design, and its outcome once known (a ``TrialOutcome``,
    ``_Lost`` when its worker process died, or None while it trains)."""

    trial: Any
    arch: Any
    seed: int
    trains: bool  # False: answered from the record (a repeat, a known poison design) when asked
    outcome: Any = None
    beat: Any = None
    ticket: int | None = None


@dataclass(frozen=True)
class _Lost:
    reason: str


def train_trial(config, arch, seed: int, seen: Seen, *, data=None, on_progress=None):
    """Train one trial of ``config``'s search (the job a worker process runs): ``run_trial`` with the
    rung rule judging by ``seen``, what the study held when the trial was asked."""
    stopper = None
    if config.early_stop == "rungs" and config.recipe.rungs:
        cost = count_cost(arch, config.deploy.image_size, config.deploy.num_classes)
        stopper = RungStopper(config.recipe.rungs, cost.gflops, cost.mparams, seen)
    return run_trial(arch, config.recipe, config.budget, config.deploy, seed=seed, data=data,
                     should_stop=stopper, on_progress=on_progress)


def prepare_trial(study, config, trial) -> tuple[PendingTrial, Seen | None]:
    """The design of the asked ``trial``, and its outcome when the record answers it (a repeat, a
    known poison design); else what its rungs will judge by."""
    from .confirm import study_noise

    arch = config.space.sample(trial)
    trial.set_user_attr("arch", arch.to_json())
    seed = config.seed + trial.number
    recs = records(study)
    noise = study_noise(study, config.recipe, recs)
    outcome = repeat_outcome(arch, recs, noise, seed=seed, max_seeds=config.max_seeds_per_design,
                             exclude=trial.number, objectives=config.objectives)
    if outcome is None:
        cost = count_cost(arch, config.deploy.image_size, config.deploy.num_classes)
        outcome = poison_outcome(arch, study.get_trials(deepcopy=False), cost, seed=seed)
    if outcome is None and not config.budget.fits(cost, arch):  # never trained: no slot needed
        outcome = run_trial(arch, config.recipe, config.budget, config.deploy, seed=seed)
    if outcome is not None:
        return PendingTrial(trial, arch, seed, trains=False, outcome=outcome), None
    return PendingTrial(trial, arch, seed, trains=True), Seen(tuple(peers_of(recs, exclude=trial.number)), noise)


def _tell(study, config, p: PendingTrial):
    """Record ``p``'s outcome (a lost one is failed and retried under the one retry rule); returns the
    FrozenTrial. A trial another process failed meanwhile (it took this one for dead) keeps that
    record: this result is dropped in one line."""
    import optuna

    if p.beat is not None:
        p.beat.__exit__(None, None, None)
    if isinstance(p.outcome, _Lost):
        from ..record.retries import LOST, why_not_retried

        p.trial.set_user_attr(LOST, True)
        trials = study.get_trials(deepcopy=False)
        why_not = why_not_retried(trials[p.trial.number], trials)
        frozen = record_outcome(study, p.trial, None, reason=f"{p.outcome.reason}; {why_not or 'retried'}")
        if not why_not:
            requeue(study, p.trial.params, p.trial.number)
        return frozen
    try:
        return record_outcome(study, p.trial, p.outcome, budget=config.budget)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        o = p.outcome
        taken = _taken(study, p.trial.number, o.status.value + (
            f", accuracy {o.accuracy:.4f}" if o.accuracy is not None else ""))
        if taken is None:
            raise
        return taken


def interrupt_trial(study, p: PendingTrial) -> None:
    """``p`` was cut short (Ctrl-C, SIGTERM, an error elsewhere): failed as interrupted and enqueued
    again, so the next run trains it."""
    import optuna

    if p.beat is not None:
        p.beat.__exit__(None, None, None)
    try:
        p.trial.set_user_attr("status", Status.INTERRUPTED.value)
        p.trial.set_user_attr("reason", "interrupted")
        study.tell(p.trial, state=optuna.trial.TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
        return  # already failed by another process, which retries it
    requeue(study, p.trial.params, p.trial.number)


def search_trials(study, config, *, data=None, pool=None, on_done: Callable | None = None,
                  live: Callable[[str], None] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Run trials until ``study`` has ``config.n_trials`` counted ones, training in this process
    (``pool`` None) or in ``pool``'s worker processes.

    **The answer depends on the seed and ``config.workers`` only, never on timing.** Trials are told
    in the order they were asked, and a trial that trains is asked only when fewer than ``L = 2W - 1``
    trials that train are asked and not yet told (``W`` = ``config.workers``): the pool trains ``W`` of
    them at once, in the order asked, and the other ``W - 1`` wait asked, so a worker that finishes
    early starts the next one instead of waiting for the oldest to be told. So when a trial is asked,
    which trials the study holds told and which running is fixed by the order alone, whichever
    finished first. The sampler treats the running ones as pending (TPE's constant liar), and each
    trial's rungs judge by what the study held when it was asked (``Seen``). A trial answered without
    training (a repeat, a known poison design, a design over budget) takes no slot and is told in
    its turn. With ``W`` = 1 and no pool this is the sequential search exactly.
    """
    import contextlib

    import optuna

    from ..nn.data import load_data

    if pool is None and data is None:
        data = load_data(config.recipe)
    window = 2 * config.workers - 1 if pool is not None else 1
    inflight: deque[PendingTrial] = deque()
    streak = 0
    state = {}  # "none_left": the last ask found no trial left to start

    def tell(p: PendingTrial) -> bool:
        nonlocal streak
        frozen = _tell(study, config, p)
        if on_done is not None:
            on_done(frozen)
        streak = streak + 1 if frozen.user_attrs.get("status") == Status.REPEAT.value else 0
        if streak >= REPEAT_STREAK:
            if not propose_fresh(study, config.space, config.seed + frozen.number):
                return False  # every design of the space is known: nothing new to learn
            streak = 0
        return True

    def fill() -> bool:
        """Ask trials until ``window`` of them train; False when none is left to ask."""
        while sum(p.trains for p in inflight) < window and len(inflight) < window + REPEAT_STREAK:
            lost, trial = _next_trial(study, config.n_trials)
            for number in lost:
                if on_done is not None:
                    on_done(study.trials[number])
            if trial is None:
                state["none_left"] = True
                return False
            try:
                p, seen = prepare_trial(study, config, trial)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed meanwhile by another process
                if (taken := _taken(study, trial.number, "not started")) is None:
                    raise
                if on_done is not None:
                    on_done(taken)
                continue
            except BaseException:  # Ctrl-C while its design was drawn: it is stopped like the others
                interrupt_trial(study, PendingTrial(trial, None, 0, False))
                raise
            inflight.append(p)
            if not (len(inflight) == 1 and p.outcome is not None):  # not told at once: it beats while it waits
                p.beat = Heartbeat(study, trial.number).__enter__()
            if p.trains:
                if pool is None:
                    short = f"#{trial.number} {p.arch.id}"
                    p.outcome = train_trial(config, p.arch, p.seed, seen, data=data, on_progress=None if live is None
                                            else (lambda pr, short=short: live(f"{short} {pr}")))
                else:
                    p.ticket = pool.submit(train_trial, (config, p.arch, p.seed, seen), config.recipe)
            if len(inflight) == 1 and p.outcome is not None:  # nothing before it: told at once
                if not tell(inflight.popleft()):
                    return False
        return True

    try:
        more = True
        while True:
            if more:
                more = fill()
            if not inflight:
                if state.pop("none_left", False) and _others_running(study):
                    # Another process's trial (a shared study) may still die: stay, so the last one
                    # standing retries it here and the study ends with the trials asked for.
                    if live is not None:
                        live("nothing left to start: waiting for the other processes' trials "
                             "(one that dies is retried here)")
                    time.sleep(WAIT_S)
                    more = True
                    continue
                break
            head = inflight[0]
            while head.outcome is None:
                _receive(pool, inflight, live, log)
            inflight.popleft()
            if not tell(head):
                more = False
            while more and inflight and not inflight[0].trains:  # answers from the record: no waiting
                if not tell(inflight.popleft()):
                    more = False
    except BaseException:
        with contextlib.suppress(Exception):
            for p in inflight:
                interrupt_trial(study, p)
        raise


def _receive(pool, inflight, live, log) -> None:
    """Wait for the pool's next event and file it with its trial."""
    ev = pool.next()
    p = next((p for p in inflight if p.ticket == ev.ticket), None)
    if p is None:
        return
    if ev.kind == "started":
        p.trial.set_user_attr("worker_pid", ev.value)
    elif ev.kind == "progress":
        if live is not None:
            live(f"#{p.trial.number} {p.arch.id} {ev.value}")
    elif ev.kind == "done":
        p.outcome = ev.value
    elif ev.kind == "died":
        p.outcome = _Lost(ev.value)
        if log is not None:
            log(f"#{p.trial.number}: {ev.value}; a new worker process takes its place")
    else:
        raise RuntimeError(f"trial #{p.trial.number} ({p.arch.id}) raised in its worker process: {ev.value}\n{ev.detail}")


WAIT_S = 1.0  # how often a search with nothing left to start looks at other processes' running trials


def _others_running(study) -> bool:
    """Whether the study has RUNNING trials (of other processes: this one has none in flight then)."""
    import optuna

    return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def run_one(study, config, data=None, trial=None):
    """Run one candidate (``trial``, or one asked now) in this process, or answer it from the record;
    record it; returns the FrozenTrial. On Ctrl-C the trial is failed as "interrupted" and enqueued again."""
    import optuna

    trial = ask(study) if trial is None else trial
    p = None
    try:
        p, seen = prepare_trial(study, config, trial)
        if p.trains:
            with Heartbeat(study, trial.number):
                p.outcome = train_trial(config, p.arch, p.seed, seen, data=data)
        return _tell(study, config, p)
    except optuna.exceptions.UpdateFinishedTrialError:
        if (taken := _taken(study, trial.number, "not finished")) is None:
            raise
        return taken
    except BaseException:
        if p is None or p.outcome is None:
            interrupt_trial(study, p or PendingTrial(trial, None, 0, False))
        raise


def _next_trial(study, n_trials: int):
    """(trials of dead processes failed now, this process's next trial or None when none is left to
    start): recovering, counting and asking under one claim, so the study ends with exactly
    ``n_trials`` counted trials however many processes search it."""
    with claim(study):
        # grace 0: every se-nas process asks and records the owner under this claim, so a RUNNING trial
        # with no owner seen here lost its process between the two (e.g. a full disk) and is dead now
        lost = recover_dead_trials(study, grace_s=0)
        return lost, (ask(study, beat=True) if remaining(study, n_trials) > 0 else None)


def run(study, config, progress, data, pool=None) -> None:
    """The search stage on the Optuna backend: ``search_trials`` with the search's progress."""
    search_trials(study, config, data=data, pool=pool, on_done=progress.trial_done, live=progress.live,
                  log=progress.log)


def worker_count(requested: int, cores: int) -> tuple[int, str | None]:
    """``requested`` workers, clamped to the cores this process may use, and the one line saying so
    when clamped (None when not). Not to the trials left: the workers also train the confirmation,
    and the window, not the pool's size, decides what the sampler sees."""
    n = max(1, min(requested, cores))
    if n == requested:
        return n, None
    return n, (f"--workers {requested}: using {n} worker process{'es' if n != 1 else ''} "
               f"({cores} core{'s' if cores != 1 else ''} this process may use)")
