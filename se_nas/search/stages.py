"""The search: a multi-objective study over a search space, under a budget, with answers that
carry their noise.

``run_search`` runs the stages of one search, whichever backend trains the trials:

1. **calibrate**: the plain backbone and the paper's r=16 SE under a few fixed seeds, to measure the
   proxy's seed noise (``se_nas.search.confirm``); early stopping acts only beyond that noise;
2. **search**: the sampler proposes designs; each is costed before training (over budget: never
   trained) and trained as one trial (``se_nas.search.trial``). A design proposed again is answered from
   its record unless its uncertainty decides the front, when it gets another seed;
3. **confirm**: the chosen design, the next designs of its front, r=16 and the plain backbone under
   the same K fresh seeds; the final front and the one-sentence finding come from those means. Under
   ``confirm_recipe`` (``--confirm-recipe``: a wider or longer training than the search's proxy) the
   confirmation is the second fidelity: it judges, and the finding says how the two rankings agree.

Objectives (``SearchConfig.objectives``, default ``se_nas.record.study.OBJECTIVES``): validation accuracy of
the trained proxy (maximise), GFLOPs and parameters of the deployment model (minimise), or its latency
predicted from the device's table: a Pareto search, not a weighted sum.
Backends (``BACKENDS``): ``optuna`` (embedded; trials in this process or ``workers`` processes on
one storage) and ``ray`` (Ray Tune on a local or remote cluster). Both write the same study.
Rerunning the same command continues every stage.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..design.budget import Budget, Deploy, check_feasible
from ..record.samplers import SAMPLERS, make_sampler, process_seed, quiet_optuna
from ..design.space import DEFAULT_SPACE, SearchSpace, load_space
from ..record.storage import DEFAULT_ROOT, StorageError, check_study_name, open_study
from ..record.claims import join_search, recover_dead_trials
from ..record.study import OBJECTIVES, SearchError, StudySettings, check_objectives, counted
from .strategies import BACKENDS, MULTI_TRIAL, get_strategy


EARLY_STOPS = ("rungs", "asha", "none")


@dataclass
class SearchConfig:
    """Everything a search needs; ``space`` and ``recipe`` may be given as names or paths.

    ``strategy`` names an entry of ``se_nas.search.strategies.STRATEGIES``; ``n_trials`` and ``sampler``
    left as None take that strategy's defaults, and ``study`` left as None is named after the space, the
    budget and the strategy, exactly as the command line does."""

    study: str | None = None
    space: SearchSpace | str = DEFAULT_SPACE
    recipe: Any = "digits"  # se_nas.design.recipe.Recipe or a name/path for load_recipe
    budget: Budget = field(default_factory=Budget)
    deploy: Deploy | None = None  # None: the space's deployment model
    strategy: str = MULTI_TRIAL
    n_trials: int | None = None  # trials (multi-trial) or designs to rank (oneshot); None: the strategy's default
    sampler: str | None = None  # None: the strategy's default
    workers: int | str = "auto"  # "auto": the cores this process may use (its CPU affinity)
    storage: str | None = None
    backend: str = "optuna"
    ray_address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    early_stop: str = "rungs"
    seed: int = 0
    root: str | Path = DEFAULT_ROOT
    progress: bool = True
    calibration_seeds: int = 3  # plain and r=16 under this many seeds before the search (0: none)
    confirm_top: int = 3  # designs of the front to confirm, the chosen one included (0: no confirmation)
    confirm_min_seeds: int = 3
    confirm_max_seeds: int = 5  # K comes from the measured noise, within [min, max]
    max_seeds_per_design: int = 2  # a repeated design gets another seed while it decides the front
    recipe_name: str = ""
    confirm_recipe: Any = None  # the confirmation's recipe (a Recipe, name or path); None: ``recipe``
    confirm_recipe_name: str = ""
    objectives: tuple[str, ...] = OBJECTIVES  # names of study.OBJECTIVE_TABLE, accuracy among them
    supernet_epochs: int | None = None  # oneshot: epochs of supernet training (None: twice the recipe's)
    supernet_sampling: str = "sandwich"  # oneshot: the path-sampling rule of supernet training

    def __post_init__(self) -> None:
        from ..design.recipe import Recipe, RecipeError, load_recipe

        if not isinstance(self.space, SearchSpace):
            self.space = load_space(self.space)
        if not isinstance(self.recipe, Recipe):
            self.recipe_name = self.recipe_name or Path(str(self.recipe)).stem
            self.recipe = load_recipe(self.recipe)
        self.recipe_name = self.recipe_name or "custom"
        if self.confirm_recipe is None:
            self.confirm_recipe, self.confirm_recipe_name = self.recipe, self.confirm_recipe_name or self.recipe_name
        elif not isinstance(self.confirm_recipe, Recipe):
            self.confirm_recipe_name = self.confirm_recipe_name or Path(str(self.confirm_recipe)).stem
            try:
                self.confirm_recipe = load_recipe(self.confirm_recipe)
            except RecipeError as e:  # which of the two recipes is wrong
                raise RecipeError(f"confirm_recipe (--confirm-recipe): {e}") from None
        self.confirm_recipe_name = self.confirm_recipe_name or "custom"
        if self.deploy is None:
            self.deploy = self.space.deploy
        strategy = get_strategy(self.strategy)
        self.n_trials = strategy.default_count if self.n_trials is None else self.n_trials
        self.sampler = strategy.default_sampler if self.sampler is None else self.sampler
        if self.study is None:
            self.study = default_study_name(self.space, self.budget) + strategy.study_suffix
        for name, allowed in (("sampler", SAMPLERS), ("backend", BACKENDS), ("early_stop", EARLY_STOPS)):
            if getattr(self, name) not in allowed:
                raise SearchError(f"unknown {name} {getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        for name, low in (("calibration_seeds", 0), ("confirm_top", 0), ("confirm_min_seeds", 2),
                          ("confirm_max_seeds", 2), ("max_seeds_per_design", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SearchError(f"{name} must be an integer >= {low}, got {name}={v!r}")
        if self.confirm_max_seeds < self.confirm_min_seeds:
            raise SearchError(f"confirm_max_seeds must be >= confirm_min_seeds ({self.confirm_min_seeds}), "
                              f"got {self.confirm_max_seeds}")
        if self.early_stop == "asha" and self.backend != "ray":
            raise SearchError("early_stop 'asha' needs backend 'ray' (Ray's ASHA scheduler); "
                              "the Optuna backend allows: rungs, none")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= 2**32 - 1:
            raise SearchError(f"seed must be an integer in 0..{2**32 - 1} (the sampler's seed), got seed={self.seed!r}")
        for name in ("n_trials", "workers"):
            v = getattr(self, name)
            if name == "workers" and v == "auto":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SearchError(f"{name} must be a positive integer{' or auto' if name == 'workers' else ''}, "
                                  f"got {name}={v!r}")
        if not (isinstance(self.cpus_per_trial, (int, float)) and self.cpus_per_trial > 0):
            raise SearchError(f"cpus_per_trial must be a positive number, got {self.cpus_per_trial!r}")
        if not (isinstance(self.gpus_per_trial, (int, float)) and self.gpus_per_trial >= 0):
            raise SearchError(f"gpus_per_trial must be a number >= 0, got {self.gpus_per_trial!r}")
        self.objectives = check_objectives(self.objectives)
        if "latency" in self.objectives and not self.budget.latency:
            raise SearchError("--objectives latency needs the device's latency table: --latency TABLE "
                              "(written by `se-nas latency profile`)")
        try:
            check_study_name(self.study)
        except StorageError as e:
            raise SearchError(str(e)) from None
        if strategy.check is not None:
            strategy.check(self)

    @property
    def settings(self) -> StudySettings:
        return StudySettings(self.space.to_dict(), self.recipe.to_dict(), self.deploy.to_dict(),
                             self.budget.to_dict(), self.early_stop, self.objectives)


def default_study_name(space: SearchSpace, budget: Budget) -> str:
    """``resnet50-per-stage-4gflops``: the space plus the budget, so a new budget gets a new study."""
    parts = [space.name]
    if budget.max_gflops is not None:
        parts.append(f"{budget.max_gflops:g}gflops")
    if budget.max_mparams is not None:
        parts.append(f"{budget.max_mparams:g}mparams")
    if budget.max_latency_ms is not None:
        parts.append(f"{budget.max_latency_ms:g}ms")
    return "-".join(parts)


def _check_settings(study, config: SearchConfig) -> None:
    """Store the settings with a new study; refuse to continue one created with other settings."""
    # early_stop too: trials judged under another stopping rule must not share one front.
    want = config.settings.to_attrs()
    have = study.user_attrs
    if "space" in have and "objectives" not in have:  # a study from before --objectives: the default
        have = {**have, "objectives": list(OBJECTIVES)}
    for key, value in want.items():  # compare everything before writing anything
        old = _same_table_path(have[key], value) if key == "budget" and key in have else have.get(key)
        if key in have and old != value:
            diff = _first_difference(old, value)
            raise SearchError(
                f"study {config.study!r} was created with a different {key} ({diff}); continue it with the "
                f"same settings, or start a new study with --study NEW_NAME")
    for key, value in want.items():
        if key not in have:
            study.set_user_attr(key, value)


def _same_table_path(old: Any, new: dict) -> Any:
    """The stored budget ``old`` with its latency table path taken as ``new``'s when both name the same
    profile: the same header hash (``--latency ./t.json`` against ``t.json`` or an absolute path, or the
    table moved), or, in a budget stored without a hash, the same file. A path is not a budget."""
    if not (isinstance(old, dict) and old.get("latency") and new.get("latency")):
        return old
    if old.get("latency_hash") is not None:
        same = old["latency_hash"] == new.get("latency_hash")
        return {**old, "latency": new["latency"]} if same else old
    same = os.path.realpath(str(old["latency"])) == os.path.realpath(str(new["latency"]))
    return {**old, "latency": new["latency"], "latency_hash": new.get("latency_hash")} if same else old


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else k)
    return f"{path or 'value'}: {old!r} in the study, {new!r} now"


def prepare_study(config: SearchConfig):
    """Check the budget can be met, open (or create) the study, check its settings, recover trials of
    dead processes. Returns the ``optuna.Study`` with this process's sampler (worker processes of
    the Optuna backend open the study again with their own)."""
    check_feasible(config.space, config.budget, config.deploy)
    study = open_study(config.study, storage=config.storage, root=config.root, create=True, heartbeat=True,
                       objectives=config.objectives)
    _check_settings(study, config)
    recover_dead_trials(study)
    study.sampler = make_sampler(config.sampler, process_seed(config.seed, 0, counted(study)[0],
                                                              shared=config.storage is not None,
                                                              others=join_search(study)))
    return study


def _resolve_workers(study, config: SearchConfig, strategy) -> None:
    """``config.workers`` as a number: "auto" is the cores this process may use (its CPU affinity, not
    the ones idle now, so the answer depends on the machine and the seed only), clamped to the cores;
    says so in one line. On Ray it is the number of concurrent Ray trials ("auto":
    what the cluster's resources hold, ``se_nas.search.ray_backend.concurrent_trials``). The one-shot
    search trains one supernet."""
    from .optuna_backend import worker_count
    from ..record.study import remaining
    from .trial import cores

    if config.backend == "ray" and strategy.name == MULTI_TRIAL:
        from .ray_backend import concurrent_trials

        config.workers, line = concurrent_trials(config, remaining(study, config.n_trials))
        if line and config.progress:
            print(line, flush=True)
        return
    if config.backend != "optuna" or strategy.name != MULTI_TRIAL:
        config.workers = 1 if config.workers == "auto" else config.workers
        return
    auto = config.workers == "auto"
    n = cores()
    config.workers, line = worker_count(n if auto else config.workers, n)
    if auto and config.progress:
        print(f"--workers auto: {config.workers} worker process{'es' if config.workers != 1 else ''} "
              f"({n} core{'s' if n != 1 else ''} this process may use); the answer depends on the seed and the "
              "worker count, so the same --seed with --workers N gives it again", flush=True)
    elif line and config.progress:
        print(line, flush=True)


def run_search(config: SearchConfig):
    """Run (or continue) the search: calibrate, run the strategy's search stage until the study has
    ``config.n_trials`` counted trials (or ranked designs), confirm. Prints the summary; returns the
    ``optuna.Study``. The strategy is stored with the study: a study continues only under the strategy
    that started it."""
    from ..record.results import designs_of
    from ..record.study import records
    from .confirm import calibrate, confirm
    from ..nn.data import load_data
    from .progress import Progress, summarize
    from .trial import configure_threads, machine_load_warning

    quiet_optuna()
    data = load_data(config.recipe)  # a missing or malformed dataset fails here, before any study exists
    same = config.confirm_recipe.to_dict() == config.recipe.to_dict()
    confirm_data = data if same or not config.confirm_top else load_data(config.confirm_recipe)
    study = prepare_study(config)
    strategy = get_strategy(config.strategy)
    have = study.user_attrs.get("strategy") or (MULTI_TRIAL if counted(study)[0] else strategy.name)
    if have != strategy.name:
        raise SearchError(f"study {config.study!r} holds a {have} search; continue it with --strategy {have}, "
                          f"or start a new study with --study NEW_NAME")
    if "strategy" not in study.user_attrs:
        study.set_user_attr("strategy", strategy.name)
    _resolve_workers(study, config, strategy)
    progress = Progress(study, config)
    import torch

    threads = torch.get_num_threads()
    configure_threads(1)  # trainings in this process run on one thread; worker processes set their own
    # Ray's trials may run on other machines: here only the driver's own share is judged, as before
    if config.progress and (warning := machine_load_warning(config.workers if config.backend == "optuna" else 1)):
        progress.log(warning)
    pool = runner = None
    if config.backend == "ray":  # calibration and confirmation runs as Ray tasks too
        from .ray_runs import runner as ray_runner

        runner = ray_runner(config)
    elif config.workers > 1:  # calibration, search and confirmation trainings across the cores
        from functools import partial

        from .pool import Pool

        pool = Pool(config.workers)
        runner = partial(pool.runner, live=progress.live)
    try:
        if config.calibration_seeds:
            calibrate(study, config.settings, config.calibration_seeds, data=data, progress=progress, runner=runner)
        strategy.stage(study, config, progress, data, pool)
        progress.close()
        if config.confirm_top:
            confirm(study, config.settings, top=config.confirm_top, min_seeds=config.confirm_min_seeds,
                    max_seeds=config.confirm_max_seeds, data=confirm_data, progress=progress, runner=runner,
                    designs=designs_of(records(study), strategy.values), recipe=config.confirm_recipe,
                    recipe_name=config.confirm_recipe_name)
    finally:
        progress.close()
        if pool is not None:
            pool.close()
        torch.set_num_threads(threads)
    if config.progress:
        print(summarize(study, config.root, config.storage))
    return study
