"""Search strategies: how the search stage of a study proposes and scores designs.

A strategy is a value. It owns its name (stored with the study, so a study continues only under the
strategy that started it), the sampler and the count it uses when none is given, what that count
counts, the suffix of its default study name, its search stage, and the designs its confirmation
picks from. ``run_search`` dispatches on ``SearchConfig.strategy`` through ``STRATEGIES``; the command
line only parses flags into that config, so ``run_search(SearchConfig(...))`` from Python gets exactly
the command line's defaults. ``values`` says which trial records are the search stage's values: the
confirmation picks from their designs, and summary, progress and report show them.

- ``multi-trial``: the sampler proposes designs and each is trained as a trial (Hu et al.'s
  standalone training, on the proxy recipe).
- ``oneshot``: one weight-sharing SE supernet is trained, designs are ranked as its paths, and the
  best are confirmed standalone (``se_nas.search.oneshot``, docs/oneshot.md).

Summary, progress and report ask ``strategy_of(study)`` what a study's values are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from operator import attrgetter

from ..record.study import SearchError

MULTI_TRIAL = "multi-trial"


@dataclass(frozen=True)
class Strategy:
    name: str
    default_sampler: str  # a name of se_nas.record.samplers.SAMPLERS
    default_count: int  # SearchConfig.n_trials when none is given
    counts: str  # what n_trials counts, in words
    study_suffix: str  # added to the default study name
    scores: str  # what the search stage's values are, in words
    stage: Callable[[Any, Any, Any, Any, Any], None]  # (study, config, progress, data, pool): the search stage
    values: Callable[[Any], bool]  # a trial record -> whether it is one of the search stage's values
    check: Callable[[Any], None] | None = None  # config -> None: refuses bad settings before anything runs

    @property
    def trains_each_design(self) -> bool:
        """Whether the search stage's values are trained accuracies (else scores of another fidelity)."""
        return self.name == MULTI_TRIAL


def _optuna_backend(study, config, progress, data, pool) -> None:
    from .optuna_backend import run

    run(study, config, progress, data, pool)


def _ray_backend(study, config, progress, data, pool) -> None:
    from .ray_backend import run

    run(study, config, progress, data)


BACKENDS: dict[str, Callable] = {"optuna": _optuna_backend, "ray": _ray_backend}


def _multi_trial_stage(study, config, progress, data, pool) -> None:
    progress.stage("search", config.n_trials)
    BACKENDS[config.backend](study, config, progress, data, pool)


def _oneshot_stage(study, config, progress, data, pool) -> None:
    from .oneshot import search_stage

    search_stage(study, config, progress, data)


def _oneshot_check(config) -> None:
    from .oneshot import check_config

    check_config(config)


STRATEGIES: dict[str, Strategy] = {
    # 30 trials: with calibration and confirmation, 8 min 18 s on one idle core, 4 min 20-37 s on two (docs/search.md)
    MULTI_TRIAL: Strategy(MULTI_TRIAL, default_sampler="tpe", default_count=30, counts="trials", study_suffix="",
                          scores="trained accuracy", stage=_multi_trial_stage,
                          values=attrgetter("is_result")),
    # NSGA-II: TPE re-proposes ranked designs 1,300-1,900 times per 300, most of the ranking's time
    # (docs/oneshot_vs_multitrial.md); NSGA-II proposed none again in 2,000 (docs/oneshot.md)
    "oneshot": Strategy("oneshot", default_sampler="nsga2", default_count=2000, counts="designs to rank",
                        study_suffix="-oneshot", scores="supernet score", stage=_oneshot_stage,
                        values=attrgetter("is_ranked"),
                        check=_oneshot_check),
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise SearchError(f"unknown search strategy {name!r}; allowed: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_of(study) -> Strategy:
    """The strategy a study was searched with (stored with it; a study from before strategies were
    stored, or one never searched, is multi-trial)."""
    name = study.user_attrs.get("strategy", MULTI_TRIAL)
    if name not in STRATEGIES:
        raise SearchError(f"study {study.study_name!r} was searched with strategy {name!r}, which this se-nas "
                          f"does not know; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]
