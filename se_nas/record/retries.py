"""Retrying a trial whose process died: the one implementation both backends use.

A trial is *lost* when its process died (evidence: its pid gone on its host, its heartbeat silent, its
Ray node gone). A lost trial is enqueued again with ``retry_of`` = its number, so the next ask runs
the same design. The cap is per design, not per chain of retries: a design whose process has died
``MAX_RETRIES + 1`` times (e.g. one the OOM killer takes every time) is not retried again, and a
later proposal of it is answered from that record (``poison_outcome``) instead of being trained.

API (used by ``se_nas.record.claims.recover_dead_trials`` and both backends):

- ``retry_lost(study, trial) -> str``: after ``trial`` (a FrozenTrial, already failed; mark it
  ``LOST: True`` in its user attributes) died: enqueue it again, or return the text saying why not
  ("" when it was enqueued). ``why_not_retried(trial, trials)``: that decision alone (to write it
  into the trial's reason before failing it).
- ``requeue(study, params, number)``: enqueue ``params`` again as a retry of trial ``number``, whatever
  the cap (an interrupted trial: nothing is wrong with its design).
- ``deaths(trials, key)``, ``design_key(trial)``: how many lost trials a design has.
- ``poison_outcome(arch, trials, cost, seed=, backend=)``: a ``repeat`` outcome for a design that died too
  often, or None.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

MAX_RETRIES = 3  # retries of a design whose process died (the design is tried MAX_RETRIES + 1 times)
LOST = "lost"  # trial user attribute: True when the trial failed because its process died


def design_key(trial) -> str:
    """What identifies a trial's design: its architecture id, or its parameters when it died before
    recording its architecture."""
    arch = trial.user_attrs.get("arch")
    if arch:
        from ..design.arch import Arch

        try:
            return "arch:" + Arch.from_json(arch).id
        except Exception:  # an unreadable record: its parameters still identify it
            pass
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    return "params:" + json.dumps(params, sort_keys=True, default=str)


def deaths(trials: Iterable, key: str) -> int:
    """Lost trials of the design ``key`` among ``trials``."""
    return sum(1 for t in trials if t.user_attrs.get(LOST) is True and design_key(t) == key)


def requeue(study, params: dict[str, Any], number: int) -> None:
    """Enqueue ``params`` again; the new trial says which one it retries (``retry_of``), so the one it
    retries is not counted towards ``n_trials`` (``se_nas.record.study.counted``)."""
    study.enqueue_trial(params, user_attrs={"retry_of": number})


def why_not_retried(trial, trials) -> str:
    """"" when the lost ``trial`` is to be retried, else why not (its design died more than
    ``MAX_RETRIES`` times, ``trial`` included whether or not it is marked among ``trials`` yet)."""
    n = deaths((t for t in trials if t.number != trial.number), design_key(trial)) + 1
    if n > MAX_RETRIES:
        return f"not retried again: this design was tried {n} times and died each time"
    return ""


def retry_lost(study, trial, trials: list | None = None) -> str:
    """Enqueue the lost ``trial`` (finished already) again unless its design has died more than
    ``MAX_RETRIES`` times. Returns "" when it was enqueued, else the words saying why not.
    ``trials``: the study's trials if already read."""
    why_not = why_not_retried(trial, study.get_trials(deepcopy=False) if trials is None else trials)
    if not why_not:
        # A trial that died right after ask has no params yet: its enqueued ones, if it had any.
        requeue(study, trial.params or trial.system_attrs.get("fixed_params", {}), trial.number)
    return why_not


def poison_outcome(arch, trials: Iterable, cost, *, seed: int, backend: str = "optuna"):
    """A known poison design (its process died more than ``MAX_RETRIES`` times) is answered from its
    record, like a repeat, and not trained again (the sampler is told accuracy 0, as for a design
    over budget; it is never a result); None for any other design. ``cost``: its ``count_cost``."""
    from .study import Status, TrialOutcome

    n = deaths(trials, "arch:" + arch.id)
    if n <= MAX_RETRIES:
        return None
    return TrialOutcome(arch=arch, status=Status.REPEAT, gflops=cost.gflops, mparams=cost.mparams, seed=seed,
                        backend=backend, reason=f"repeat of a design whose process died {n} times: not trained again")
