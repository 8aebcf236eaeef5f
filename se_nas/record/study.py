"""The study: one result format, whichever backend ran the trials.

A study is an Optuna study (by default a SQLite file ``trials/<name>/study.db``, see
``se_nas.record.storage``) with the objectives its settings name (``OBJECTIVE_TABLE``; default ``OBJECTIVES``:
validation accuracy (maximise), GFLOPs and parameters (millions) of the deployment model (minimise);
``latency``, predicted from the device's table, can join or replace the last two). Ray Tune results are written into the
same kind of study, so report, export and compare read ``records(study)`` and never care which
backend ran.

Every finished trial carries these user attributes (``TrialOutcome.to_attrs``): ``arch`` (canonical
JSON), ``status`` (a ``Status``), ``gflops``, ``mparams``, ``epochs``, ``history`` (validation
accuracy after each epoch), ``seconds``, ``reason``, ``seed``, ``backend``, and ``latency_ms`` (predicted
from the device's table) when the study has one. The study itself carries
its ``StudySettings`` (space, recipe, deploy, budget, early_stop, objectives) as study user attributes, and the
runs of the calibration and confirmation stages (``se_nas.runs``).

One trial is one seed of one design. What a design *is worth* is the aggregate over its seeds
(``se_nas.record.results``), never one trial's number.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from ..errors import SearchError, SeNasError  # SearchError lives in se_nas.errors: the nn floor raises it too
from ..design.arch import Arch


SUPERNET = "supernet"  # the fidelity of a one-shot search's trials: a path's score in the weight-sharing supernet


class Status(str, Enum):
    """What became of a trial. A ``str`` so that it is stored, compared and printed as its value."""

    COMPLETE = "complete"            # trained to the last epoch, within budget: a result
    STOPPED_EARLY = "stopped_early"  # trained, stopped at a rung: judged on fewer epochs, not a result
    OVER_BUDGET = "over_budget"      # costed over the budget: never trained
    REPEAT = "repeat"                # a design already trained, answered from its record: not trained again
    FAILED = "failed"                # training failed (NaN, divergence, OOM, a killed process)
    FAILED_TO_LEARN = "failed_to_learn"  # trained to the end, but its accuracy is chance: not a result
    INTERRUPTED = "interrupted"      # stopped by Ctrl-C or SIGTERM, queued again: not a failure
    RUNNING = "running"
    QUEUED = "queued"                # waiting to be retried

    def __str__(self) -> str:
        return self.value

    def __hash__(self) -> int:  # hash as the plain string it equals (Enum hashes the member name)
        return str.__hash__(self)

    @property
    def text(self) -> str:
        return _STATUS_TEXT[self]

    @property
    def trained(self) -> bool:
        return self in (Status.COMPLETE, Status.STOPPED_EARLY, Status.FAILED_TO_LEARN)


_STATUS_TEXT = {Status.COMPLETE: "complete", Status.STOPPED_EARLY: "stopped early",
                Status.OVER_BUDGET: "over budget", Status.REPEAT: "repeated design",
                Status.FAILED: "failed", Status.FAILED_TO_LEARN: "failed to learn (chance accuracy)",
                Status.INTERRUPTED: "interrupted", Status.RUNNING: "running", Status.QUEUED: "queued for retry"}
STATUSES = tuple(s.value for s in Status)
OUTCOMES = (Status.COMPLETE, Status.STOPPED_EARLY, Status.OVER_BUDGET, Status.REPEAT, Status.FAILED,
            Status.FAILED_TO_LEARN)


@dataclass(frozen=True)
class Objective:
    """One objective a study can have: its name (``--objectives``), direction, display, and ``attr``,
    the attribute that holds it on a ``TrialOutcome``, a ``TrialRecord`` and a ``results.Design``."""

    name: str
    direction: str
    label: str
    fmt: str
    attr: str

    @property
    def short(self) -> str:
        """``GFLOPs``, ``parameters``, ``latency``: the label without its unit and qualification."""
        return self.label.split(",")[0].split(" (")[0]


OBJECTIVE_TABLE = {o.name: o for o in (
    Objective("accuracy", "maximize", "validation accuracy (proxy)", ".4f", "accuracy"),
    Objective("gflops", "minimize", "GFLOPs (deployment model)", ".3f", "gflops"),
    Objective("mparams", "minimize", "parameters, millions (deployment model)", ".2f", "mparams"),
    Objective("latency", "minimize", "latency, ms (deployment model, predicted from the device's table)", ".2f",
              "latency_ms"),
)}
OBJECTIVES = ("accuracy", "gflops", "mparams")  # the default, and the objectives of every older study
DIRECTIONS = tuple(OBJECTIVE_TABLE[o].direction for o in OBJECTIVES)


def directions(objectives=OBJECTIVES) -> tuple[str, ...]:
    return tuple(OBJECTIVE_TABLE[o].direction for o in objectives)


def check_objectives(objectives) -> tuple[str, ...]:
    """``objectives`` (names, or one comma-separated string) as a tuple in ``OBJECTIVE_TABLE``'s order
    (accuracy first, then the costs), checked: known names, each once, accuracy among them (the
    study's one result that is trained, not counted)."""
    names = tuple(o.strip() for o in objectives.split(",")) if isinstance(objectives, str) else tuple(objectives)
    bad = [o for o in names if o not in OBJECTIVE_TABLE]
    if bad or "accuracy" not in names or len(set(names)) != len(names) or len(names) < 2:
        costs = ", ".join(list(OBJECTIVE_TABLE)[1:])
        raise SearchError(f"--objectives must name accuracy and at least one of {costs}, "
                          f"each once, got {','.join(names)!r}" + (f" (unknown: {', '.join(bad)})" if bad else ""))
    return tuple(o for o in OBJECTIVE_TABLE if o in names)  # in the table's order: accuracy first


def objective_values(item, objectives=OBJECTIVES) -> list:
    """``item``'s values of ``objectives``, in order (``item``: a TrialOutcome, TrialRecord or Design)."""
    return [getattr(item, OBJECTIVE_TABLE[o].attr) for o in objectives]


class StudyError(SeNasError):
    """A study that doesn't exist, can't be opened, or has nothing to show."""


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial produced: the value both backends turn into a study trial."""

    arch: Arch
    status: Status
    gflops: float
    mparams: float
    accuracy: float | None = None  # validation top-1 in [0, 1] at the last epoch trained
    epochs: int = 0
    history: tuple[float, ...] = ()
    seconds: float = 0.0
    reason: str = ""
    seed: int = 0
    backend: str = "optuna"
    fidelity: str = "standalone"  # "supernet": a path's accuracy in a weight-sharing supernet (se_nas.search.oneshot)
    latency_ms: float | None = None  # predicted from the study's latency table, if it has one

    def __post_init__(self) -> None:
        try:
            status = Status(self.status)
        except ValueError:
            raise ValueError(f"status must be one of {', '.join(s.value for s in OUTCOMES)}, "
                             f"got status={self.status!r}") from None
        if status not in OUTCOMES:
            raise ValueError(f"status must be one of {', '.join(s.value for s in OUTCOMES)}, got status={status.value!r}")
        object.__setattr__(self, "status", status)

    @property
    def values(self) -> list[float] | None:
        """``values_for`` the default objectives."""
        return self.values_for(OBJECTIVES)

    def values_for(self, objectives) -> list[float] | None:
        """Values of ``objectives`` to tell the sampler. Over-budget candidates are never trained: they get
        accuracy 0 so the sampler sees the region as bad (and Optuna's constraints mark them
        infeasible); reports show them as over budget, never as results. A repeated design is told
        its record's mean. Failed trials get none."""
        if self.status is Status.FAILED:
            return None
        acc = 0.0 if self.status is Status.OVER_BUDGET else float(self.accuracy or 0.0)
        return objective_values(replace(self, accuracy=acc), objectives)

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_json()
        d["history"] = list(self.history)
        d["status"] = self.status.value
        if self.fidelity == "standalone":  # the default is left out: trials stay as they always were
            del d["fidelity"]
        if self.latency_ms is None:
            del d["latency_ms"]
        return d


@dataclass(frozen=True)
class TrialRecord:
    """One trial as read back from a study (any backend)."""

    number: int
    status: Status
    arch: Arch | None  # None only for a trial that died before its architecture was recorded
    accuracy: float | None
    gflops: float | None
    mparams: float | None
    epochs: int = 0
    history: tuple[float, ...] = ()
    seconds: float = 0.0
    reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    backend: str = ""
    fidelity: str = "standalone"
    latency_ms: float | None = None  # predicted from the study's latency table, if it has one

    @property
    def trained(self) -> bool:
        return self.status.trained

    @property
    def is_result(self) -> bool:
        """Trained to the end and within budget: the only trials whose accuracy is a result. A supernet
        path's accuracy is a ranking, never averaged with standalone trainings of the design."""
        return (self.status is Status.COMPLETE and self.arch is not None and self.accuracy is not None
                and self.fidelity == "standalone")

    @property
    def is_ranked(self) -> bool:
        """A design evaluated as a path of a one-shot search's supernet, within budget: a score that ranks
        designs, never a trained accuracy."""
        return self.fidelity == SUPERNET and self.status is Status.COMPLETE and self.arch is not None


@dataclass(frozen=True)
class StudySettings:
    """What a study was created with, as stored in its user attributes (typed, read in one place)."""

    space: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    deploy: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    early_stop: str = "rungs"
    objectives: tuple[str, ...] = OBJECTIVES  # fixed when the study is created (its directions)

    KEYS = ("space", "recipe", "deploy", "budget", "early_stop", "objectives")

    @classmethod
    def of(cls, study) -> "StudySettings":
        a = study.user_attrs
        s = cls(**{k: a[k] for k in cls.KEYS if a.get(k) is not None})
        return replace(s, objectives=tuple(s.objectives))  # stored as a JSON list

    def to_attrs(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.KEYS}, "objectives": list(self.objectives)}

    @property
    def budget_value(self):
        from ..design.budget import Budget

        return Budget(**self.budget)

    @property
    def deploy_value(self):
        from ..design.budget import Deploy

        return Deploy(**{"image_size": 224, "num_classes": 1000, **self.deploy})

    def recipe_value(self, where: str = "the study's recipe"):
        from ..design.recipe import Recipe

        return Recipe.from_dict(self.recipe, where=where)

    @property
    def space_value(self):
        """The stored space as a ``SearchSpace`` (its canonical form lists stages in order)."""
        from ..design.space import SearchSpace

        if not self.space:
            return None
        d = dict(self.space)
        if isinstance(d.get("stages"), list):
            d["stages"] = {f"s{i + 1}": st for i, st in enumerate(d["stages"])}
            d["choices"] = {}
        return SearchSpace.from_dict(d, where="the study's search space", name=d.get("name", ""))


def _status_of(t) -> Status:
    import optuna

    S = optuna.trial.TrialState
    if t.state == S.RUNNING:
        return Status.RUNNING
    if t.state == S.WAITING:  # enqueued: a retry of a trial whose worker died
        return Status.QUEUED
    if t.state == S.FAIL:
        return Status.INTERRUPTED if t.user_attrs.get("status") == Status.INTERRUPTED.value else Status.FAILED
    try:
        return Status(t.user_attrs.get("status", "failed"))
    except ValueError:
        return Status.FAILED


def records(study, skipped: list[str] | None = None) -> list[TrialRecord]:
    """Every trial of ``study`` as a ``TrialRecord``, in trial order.

    A trial whose stored attributes cannot be read (a corrupted or hand-edited record: an ``arch``
    that is not an architecture, a number that is text) raises ``StudyError`` naming the trial; with
    a ``skipped`` list, it is left out instead and one line naming it is appended there."""
    out = []
    for t in study.get_trials(deepcopy=False):
        try:
            out.append(_record_of(t))
        except (ValueError, TypeError) as e:  # ArchError is a ValueError
            line = f"trial {t.number}: its stored record is corrupted ({str(e)[:200]})"
            if skipped is None:
                raise StudyError(f"study {study.study_name!r}: {line}; repair or delete that trial") from None
            skipped.append(line)
    return out


_NUMBERS = ("accuracy", "gflops", "mparams", "seconds", "latency_ms")


def _checked_attrs(t) -> dict[str, Any]:
    """The trial's user attributes, with the type of every one a record reads checked."""
    a = t.user_attrs
    for k in _NUMBERS:
        v = a.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"{k} must be a number, got {str(v)[:40]!r}")
    for k in ("epochs", "seed"):
        v = a.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{k} must be an integer, got {str(v)[:40]!r}")
    h = a.get("history", ())
    if not isinstance(h, (list, tuple)) or any(
            x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))) for x in h):
        raise ValueError(f"history must be a list of numbers, got {str(h)[:40]!r}")
    for k in ("reason", "fail_reason", "backend", "fidelity"):
        if a.get(k) is not None and not isinstance(a[k], str):
            raise ValueError(f"{k} must be a string, got {str(a[k])[:40]!r}")
    if "arch" in a and not isinstance(a["arch"], str):
        raise ValueError(f"arch must be an architecture as JSON text, got {str(a['arch'])[:40]!r}")
    return a


def _record_of(t) -> TrialRecord:
    a = _checked_attrs(t)
    arch = Arch.from_json(a["arch"], where="arch") if "arch" in a else None
    status = _status_of(t)
    return TrialRecord(
        number=t.number,
        status=status,
        arch=arch,
        accuracy=a.get("accuracy") if status.trained or status is Status.REPEAT else None,
        gflops=a.get("gflops"),
        mparams=a.get("mparams"),
        epochs=a.get("epochs", 0),
        history=tuple(a.get("history", ())),
        seconds=a.get("seconds", 0.0),
        reason=a.get("reason", "") or (a.get("fail_reason", "") if status is Status.FAILED else ""),
        params=dict(t.params),
        seed=a.get("seed", 0),
        backend=a.get("backend", ""),
        fidelity=a.get("fidelity", "standalone"),
        latency_ms=a.get("latency_ms"),
    )


def to_frame(recs: list[TrialRecord]):
    """A pandas DataFrame of records: one row per trial, per-stage choices as columns."""
    import pandas as pd

    rows = []
    for r in recs:
        row = {
            "trial": r.number, "status": r.status.value, "arch_id": r.arch.id if r.arch else "",
            "accuracy": r.accuracy, "gflops": r.gflops, "mparams": r.mparams, "epochs": r.epochs,
            "seed": r.seed, "seconds": r.seconds, "reason": r.reason,
            "arch": r.arch.label if r.arch else "",
        }
        if r.arch is not None:
            for i, s in enumerate(r.arch.stages):
                row[f"stage{i + 1}"] = "off" if s is None else s.label
        rows.append(row)
    return pd.DataFrame(rows)


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# --- counting trials towards --n-trials --------------------------------------------------------------
def retried(study) -> set[int]:
    """Numbers of failed trials that were enqueued again (they don't count towards ``n_trials``)."""
    out = set()
    for t in study.get_trials(deepcopy=False):
        # Optuna's heartbeat retries keep failed_trial at the first failure and list every link of a
        # chain of retries in retry_history; ours mark the trial they retry with retry_of.
        chain = [t.user_attrs.get("retry_of"), t.system_attrs.get("failed_trial"),
                 *t.system_attrs.get("retry_history", [])]
        out.update(n for n in chain if isinstance(n, int))
    return out


def counted(study) -> tuple[int, int]:
    """(finished, running) trials that count towards ``n_trials``: trained, failed or over budget.
    Repeats of a known design (answered from the record) and retried failures don't count."""
    import optuna

    S = optuna.trial.TrialState
    again = retried(study)
    done = sum(1 for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.FAIL))
               if t.number not in again and t.user_attrs.get("status") != Status.REPEAT.value)
    running = len(study.get_trials(deepcopy=False, states=(S.RUNNING,)))
    return done, running


def remaining(study, n_trials: int) -> int:
    """Trials still to start for the study to reach ``n_trials`` counted ones (a rerun continues)."""
    done, running = counted(study)
    return n_trials - done - running
