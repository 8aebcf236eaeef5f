"""The study: one result format, whichever backend ran the trials.

A study is an Optuna study (by default a SQLite file ``trials/<name>/study.db``) with three
objectives: validation accuracy (maximise), GFLOPs and parameters (millions) of the deployment model
(minimise). Ray Tune results are written into the same kind of study, so report, export and compare
read ``records(study)`` and never care which backend ran.

Every finished trial carries these user attributes (``TrialOutcome.to_attrs``): ``arch`` (canonical
JSON), ``status`` (see ``OUTCOMES``), ``gflops``, ``mparams``, ``epochs``, ``history`` (validation
accuracy after each epoch), ``seconds``, ``reason``, ``seed``, ``backend``. The study itself carries
``space``, ``recipe``, ``deploy`` and ``budget`` as study user attributes.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .arch import Arch

OBJECTIVES = ("accuracy", "gflops", "mparams")
DIRECTIONS = ("maximize", "minimize", "minimize")
STATUSES = ("complete", "stopped_early", "over_budget", "failed", "running", "queued")
OUTCOMES = STATUSES[:4]  # what a finished trial can be; "queued" = waiting to be retried
DEFAULT_ROOT = Path("trials")


class StudyError(ValueError):
    """A study that doesn't exist, can't be opened, or has nothing to show."""


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial produced: the value both backends turn into a study trial."""

    arch: Arch
    status: str  # one of OUTCOMES
    gflops: float
    mparams: float
    accuracy: float | None = None  # validation top-1 in [0, 1] at the last epoch trained
    epochs: int = 0
    history: tuple[float, ...] = ()
    seconds: float = 0.0
    reason: str = ""
    seed: int = 0
    backend: str = "optuna"

    def __post_init__(self) -> None:
        if self.status not in OUTCOMES:
            raise ValueError(f"status must be one of {OUTCOMES}, got status={self.status!r}")

    @property
    def values(self) -> list[float] | None:
        """Objective values to tell the sampler. Over-budget candidates are never trained: they get
        accuracy 0 so the sampler sees the region as bad (and Optuna's constraints mark them
        infeasible); reports show them as over budget, never as results. Failed trials get none."""
        if self.status == "failed":
            return None
        acc = 0.0 if self.status == "over_budget" else float(self.accuracy or 0.0)
        return [acc, self.gflops, self.mparams]

    def to_attrs(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.to_json()
        d["history"] = list(self.history)
        return d


@dataclass(frozen=True)
class TrialRecord:
    """One trial as read back from a study (any backend)."""

    number: int
    status: str
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

    @property
    def trained(self) -> bool:
        return self.status in ("complete", "stopped_early")


def study_dir(name: str, root: str | Path = DEFAULT_ROOT) -> Path:
    return Path(root) / name


def default_storage(name: str, root: str | Path = DEFAULT_ROOT) -> str:
    return f"sqlite:///{(study_dir(name, root) / 'study.db').as_posix()}"


def open_study(name: str, storage: str | None = None, root: str | Path = DEFAULT_ROOT, sampler=None,
               create: bool = False):
    """Open (or with ``create=True``, create) the study ``name``."""
    import optuna

    if storage is None:
        d = study_dir(name, root)
        if not create and not (d / "study.db").exists():
            raise StudyError(f"no study {name!r} at {str(d / 'study.db')!r}; run `se-nas search` first"
                             + _known_studies(root))
        d.mkdir(parents=True, exist_ok=True)
        storage = default_storage(name, root)
    if create:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    directions=list(DIRECTIONS), load_if_exists=True)
        study.set_metric_names(list(OBJECTIVES))
        return study
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        raise StudyError(f"no study named {name!r} in storage {storage!r}") from None


def _known_studies(root: str | Path) -> str:
    names = sorted(p.parent.name for p in Path(root).glob("*/study.db"))
    return f"; studies here: {', '.join(names)}" if names else ""


def records(study) -> list[TrialRecord]:
    """Every trial of ``study`` as a ``TrialRecord``, in trial order."""
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        arch = Arch.from_json(a["arch"]) if "arch" in a else None
        if t.state == optuna.trial.TrialState.RUNNING:
            status = "running"
        elif t.state == optuna.trial.TrialState.WAITING:  # enqueued: a retry of a trial whose worker died
            status = "queued"
        elif t.state == optuna.trial.TrialState.FAIL:
            status = "failed"
        else:
            status = a.get("status", "failed")
        acc = a.get("accuracy")
        out.append(
            TrialRecord(
                number=t.number,
                status=status,
                arch=arch,
                accuracy=None if status in ("over_budget", "failed", "running", "queued") else acc,
                gflops=a.get("gflops"),
                mparams=a.get("mparams"),
                epochs=a.get("epochs", 0),
                history=tuple(a.get("history", ())),
                seconds=a.get("seconds", 0.0),
                reason=a.get("reason", "") or (a.get("fail_reason", "") if status == "failed" else ""),
                params=dict(t.params),
                seed=a.get("seed", 0),
                backend=a.get("backend", ""),
            )
        )
    return out


def to_frame(recs: list[TrialRecord]):
    """A pandas DataFrame of records: one row per trial, per-stage choices as columns."""
    import pandas as pd

    rows = []
    for r in recs:
        row = {
            "trial": r.number, "status": r.status, "arch_id": r.arch.id if r.arch else "",
            "accuracy": r.accuracy, "gflops": r.gflops, "mparams": r.mparams, "epochs": r.epochs,
            "seconds": r.seconds, "reason": r.reason,
            "arch": r.arch.label if r.arch else "",
        }
        if r.arch is not None:
            for i, s in enumerate(r.arch.stages):
                row[f"stage{i + 1}"] = "off" if s is None else s.label
        rows.append(row)
    return pd.DataFrame(rows)


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
