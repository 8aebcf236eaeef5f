"""One trial, whichever backend runs it: budget check, build the proxy, train, report an outcome.

``run_trial`` is the single trial function behind the Optuna and the Ray backends (DESIGN.md,
principle 5). It costs the *deployment* model first (``se_nas.design.cost.count_cost``, no model built); an
over-budget candidate is returned as ``over_budget`` and never trained. Otherwise it builds the cheap
proxy the recipe asks for (stem, width multiplier, the dataset's classes) and trains it; a NaN/inf
loss or an out-of-memory error becomes a ``failed`` outcome with the reason, so the search goes on.

``record_outcome`` writes an outcome into an Optuna trial (user attributes, the constraint values
the samplers read, then ``tell``): both backends call it, so the study format is one. In a study with
a latency table it also records each trial's predicted ``latency_ms``.
"""
from __future__ import annotations

import os
import time

from ..design.arch import Arch
from ..design.budget import Budget, Deploy
from ..nn.build import build_model
from ..design.cost import count_cost
from ..record.study import OBJECTIVES, Status, TrialOutcome, directions


PROCESS_THREADS = 1  # torch threads per search process; measured in trials/README.md ("Threads")


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(workers: int = 1) -> int:
    """One torch thread per search process (never more than the process's share of the cores).

    PyTorch otherwise starts one intra-op thread per core, and its OpenMP threads spin-wait on each
    other: on a 2-core machine beside one other busy process, 2 epochs of a digits trial did not
    finish in 300 s on 2 threads, against 23 s on 1 (docs/proxy.md). The result also depends on the
    thread count (not on the load), so one thread keeps a trial's result the same on every machine;
    parallelism comes from ``workers`` processes.
    A recipe's ``threads:`` still overrides this for its trainings."""
    threads = max(1, min(PROCESS_THREADS, cores() // max(1, workers)))
    import torch

    torch.set_num_threads(threads)
    return threads


def machine_load_warning(workers: int = 1) -> str | None:
    """A one-line warning when the machine is already too busy to give each of ``workers`` trainings
    a free core (1-minute load average >= cores - workers + 0.5: the half absorbs this process's own
    start-up and the tail of whatever just finished), else None. The answer does not change with the
    load, only the time; fewer workers would finish sooner, but the answer depends on the worker
    count, so that trades this run's answer for speed."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    n = cores()
    if load < n - workers + 0.5:
        return None
    return (f"warning: this machine is already busy (load average {load:.1f} on {n} cores): the search's "
            f"{workers} worker{'s' if workers != 1 else ''} will take longer than on an idle machine, with the same "
            "answer; a smaller --workers N may finish sooner but gives that N's answer, not this one "
            "(the answer depends on the seed and the worker count)")


def seeded_proxy(arch: Arch, recipe, num_classes: int, seed: int):
    """The proxy model to train, with initial weights from ``seed``, and the recipe carrying ``seed``
    (data order, augmentation). ``run_trial`` and ``export.train_arch`` both start here, so an
    exported model reproduces its trial exactly."""
    from ..nn.train import seed_everything

    seed_everything(seed)
    return build_model(arch, num_classes, stem=recipe.stem, width=recipe.width), seeded(recipe, seed)


def seeded(recipe, seed: int):
    """``recipe`` with the trial's seed, which the trainer uses for data order and augmentation.

    The initial weights come from ``seed_everything(seed)``; without this the data order would come
    from the recipe's seed and be the same in every trial (and every seed of ``se-nas compare``).
    The dataset itself (split, subsample) stays fixed by the recipe, whatever the seed."""
    from dataclasses import replace

    return recipe if recipe.seed == seed else replace(recipe, seed=seed)


def pinned(recipe):
    """``recipe`` with its ``threads`` set to the search's (``PROCESS_THREADS``) unless it sets its own.

    A float32 training's result depends on the number of torch threads (summation order), and torch
    cannot make it independent on the CPU. Every run of a study (search trials, calibration and
    confirmation runs, ``compare``, ``export``) therefore trains with the same thread count,
    whatever the process around it set, so that each one reproduces the others exactly."""
    from dataclasses import replace

    return recipe if recipe.threads is not None else replace(recipe, threads=PROCESS_THREADS)


def run_trial(arch: Arch, recipe, budget: Budget, deploy: Deploy, *, seed: int, data=None,
              should_stop=None, device=None, backend: str = "optuna", on_progress=None) -> TrialOutcome:
    """Check ``arch`` against ``budget`` on ``deploy`` (its GFLOPs and parameters, and its latency
    predicted from the budget's table), then train its proxy under ``recipe``.

    ``should_stop(epoch, val_accuracy) -> bool`` is called after every epoch (early stopping);
    ``on_progress(se_nas.nn.train.Progress)`` after every step (a live status line).
    ``data`` is a loaded ``DataBundle`` (loaded from the recipe if None); ``seed`` makes the trial
    reproducible (weights, data order, augmentation).
    """
    start = time.perf_counter()
    cost = count_cost(arch, deploy.image_size, deploy.num_classes)
    common = dict(arch=arch, gflops=cost.gflops, mparams=cost.mparams, seed=seed, backend=backend)
    if not budget.fits(cost, arch):
        return TrialOutcome(status=Status.OVER_BUDGET, reason=f"{budget.excess(cost, arch)}, not trained",
                            seconds=time.perf_counter() - start, **common)

    from ..nn.train import TrainingFailed, train

    if data is None:
        from ..nn.data import load_data

        data = load_data(recipe)
    model, trial_recipe = seeded_proxy(arch, pinned(recipe), data.num_classes, seed)
    try:
        result = train(model, trial_recipe, data, device=device, on_epoch=should_stop, on_progress=on_progress)
    except TrainingFailed as e:
        return TrialOutcome(status=Status.FAILED, reason=str(getattr(e, "reason", "") or e),
                            seconds=time.perf_counter() - start, **common)
    stopped = bool(result.stopped_early)
    status, reason = (Status.STOPPED_EARLY, f"stopped early at epoch {result.epochs}") if stopped else (Status.COMPLETE, "")
    if not stopped and (why := at_chance(float(result.accuracy), data.num_classes, len(data.val))):
        status, reason = Status.FAILED_TO_LEARN, why
    return TrialOutcome(
        status=status, accuracy=float(result.accuracy), epochs=int(result.epochs), history=tuple(result.history),
        seconds=time.perf_counter() - start, reason=reason, **common,
    )


def at_chance(accuracy: float, num_classes: int, n_val: int) -> str | None:
    """Why ``accuracy`` is chance (the reason a trial failed to learn), or None.

    Guessing one class (or at random) scores 1/num_classes in expectation, and the validation set's
    sampling spreads that by sqrt(p (1 - p) / n_val); three such standard errors above chance is
    what a model that learned nothing reaches by luck once in about 700 trials. A model that learned
    anything at all scores well above it (the lowest trial of the tiny and default searches: 0.30,
    chance 0.10 +- 0.05 there). The sampler is still told the accuracy, as before (nothing changes
    for the search); only fronts, confirmation and the chosen design leave the trial out."""
    p = 1.0 / max(1, num_classes)
    line = p + 3.0 * (p * (1.0 - p) / max(1, n_val)) ** 0.5
    if accuracy > line:
        return None
    return (f"trained to chance: accuracy {accuracy:.3f} on {num_classes} classes (chance {p:.3f}; at most "
            f"{line:.3f}, 3 standard errors above it on {n_val} validation images, counts as chance)")


def repeat_outcome(arch: Arch, records, noise, *, seed: int, max_seeds: int = 3,
                   backend: str = "optuna", exclude: int | None = None,
                   objectives=OBJECTIVES) -> TrialOutcome | None:
    """What to do with a proposal of a design the study has already trained: ``None`` to train it
    (a new design, or a deliberate extra seed), else a ``repeat`` outcome answered from the record.

    A design trained to the end gets another seed only while it has fewer than ``max_seeds`` and its
    uncertainty decides the front: no other design beats its mean plus two standard errors at no
    higher cost in the study's ``objectives`` (``se_nas.record.results``). Otherwise the sampler is told the
    design's mean over its seeds and nothing is trained. A design stopped early is answered with its record (the rung judged
    it); a design that failed or was over budget is run again (both are cheap or informative).
    Seeds of the design still training in other processes count towards ``max_seeds`` (``exclude``:
    the number of the trial asking, itself running).
    """
    from ..design.pareto import dominates
    from ..record.results import costs, designs_of

    same = [r for r in records if r.arch is not None and r.arch.id == arch.id and r.status.trained]
    if not same:
        return None
    done = next((d for d in designs_of(same)), None)
    common = dict(arch=arch, gflops=same[0].gflops, mparams=same[0].mparams, seed=seed, backend=backend,
                  status=Status.REPEAT, epochs=0)
    if done is None:  # only stopped early (the rung's verdict stands) or trained to chance
        r = same[-1]
        return TrialOutcome(accuracy=r.accuracy, reason=f"repeat of trial {r.number} ({r.status.text}): "
                            "answered from its record, not trained", **common)
    in_flight = sum(1 for r in records if r.status is Status.RUNNING and r.number != exclude
                    and r.arch is not None and r.arch.id == arch.id)
    if done.n + in_flight < max_seeds:
        optimistic = done.mean + 2 * done.sem(noise) if done.n > 1 or noise.sigma is not None else 1.0
        rivals = [d for d in designs_of(records) if d.id != done.id]
        if not any(dominates([d.mean, *costs(d, objectives)], [optimistic, *costs(done, objectives)],
                             directions(objectives)) for d in rivals):
            return None  # on or near the front: another seed is information
    trials = ", ".join(str(t) for t in done.trials)
    return TrialOutcome(accuracy=done.mean, reason=f"repeat of trial{'s' if done.n > 1 else ''} {trials}: told its "
                        f"mean over {done.n} seed{'s' if done.n > 1 else ''}, not trained", **common)


REPEAT_STREAK = 8  # repeats in a row after which a fresh design is proposed at random


def propose_fresh(study, space, seed: int) -> bool:
    """Enqueue a random design the study has not seen (when the sampler keeps proposing known ones).
    Returns False if none was found in a few hundred draws (a small, exhausted space)."""
    import optuna

    from ..record.study import records

    seen = {r.arch.id for r in records(study) if r.arch is not None}
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(300):
        t = scratch.ask()
        arch = space.sample(t)
        if arch.id not in seen:
            study.enqueue_trial(t.params, user_attrs={"fresh_after_repeats": True})
            return True
    return False


def record_outcome(study, trial, outcome: TrialOutcome | None, *, reason: str = "",
                   budget: Budget | None = None):
    """Write ``outcome`` into the running Optuna ``trial`` and finish it; returns the FrozenTrial.

    Trained and over-budget candidates finish COMPLETE with the values of the study's objectives
    (``TrialOutcome.values_for``) and a ``constraints``
    attribute and Optuna constraints (``Budget.check``, read by the samplers); failed ones FAIL with
    the reason. ``outcome=None`` (the trial died before producing one) fails with ``reason``.
    ``budget`` defaults to the one stored with the study.
    """
    import warnings

    with warnings.catch_warnings():
        # the heartbeat of an RDB storage is Optuna's for Study.optimize; our processes ask and tell
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return _record(study, trial, outcome, reason, budget)


def _record(study, trial, outcome, reason, budget):
    import optuna

    if outcome is None:
        trial.set_user_attr("status", Status.FAILED.value)
        trial.set_user_attr("reason", reason or "no outcome")
        return study.tell(trial, state=optuna.trial.TrialState.FAIL)
    from dataclasses import replace

    from ..record.study import StudySettings

    settings = StudySettings.of(study)
    budget = settings.budget_value if budget is None else budget
    if budget.latency:  # the study has a device's table: every trial shows its predicted latency
        outcome = replace(outcome, latency_ms=budget.latency_ms(outcome.arch))
        if note := budget.borderline(outcome.arch):  # said, never acted on: the sampler is told the same
            outcome = replace(outcome, reason=f"{outcome.reason}; {note}" if outcome.reason else note)
    for key, value in outcome.to_attrs().items():
        trial.set_user_attr(key, value)
    values = outcome.values_for(settings.objectives)
    if values is None:
        return study.tell(trial, state=optuna.trial.TrialState.FAIL)
    constraints = budget.check(outcome)
    trial.set_user_attr("constraints", list(constraints))
    # Optuna 5's constraint API: TPE, NSGA-II and GP treat trials with a value > 0 as infeasible.
    for key, value in zip(budget.constraint_names, constraints):
        trial.set_constraint(key, value)
    return study.tell(trial, values)
