"""Ray Tune backend: the same trials on a Ray cluster, written into the same study.

Ray schedules the trials (one per candidate, with ``cpus_per_trial``/``gpus_per_trial`` each, on the
local machine or an existing cluster); Optuna still proposes them, through Ray's ``OptunaSearch``
pointed at *our* study storage. The searcher runs on the driver, so only the driver touches the
study: workers need the data and se-nas, not the database. Every finished Ray trial becomes one study
trial with the same user attributes the Optuna backend writes, so report, export and compare do not
care which backend ran.

Early stopping on Ray: ``rungs`` applies se-nas's cost-aware rung rule (``se_nas.earlystop``) as a
``tune.Stopper`` on the driver; ``asha`` uses Ray's ASHA on validation accuracy alone (Ray's schedulers
take a single metric); ``none`` trains every candidate to the end.

Resuming: the study is the source of truth. Rerunning the same command counts the study's finished
trials and runs only the rest; trials the dead driver left running are failed and retried, exactly as
with the Optuna backend.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Any

from .arch import Arch
from .study import DIRECTIONS, OBJECTIVES, TrialOutcome

_MODES = ["max" if d == "maximize" else "min" for d in DIRECTIONS]


def _trainable(config: dict[str, Any], *, recipe: dict, budget: dict, deploy: dict, threads: int) -> None:
    """One Ray trial: run the backend-agnostic trial function and report its outcome.

    Each epoch before the last is reported as it ends (provisionally "stopped_early", so that if a
    Stopper or ASHA ends the trial there, its last result is already a complete record); the last
    report carries the whole outcome.
    """
    import torch
    from ray import tune

    from .budget import Budget, Deploy
    from .cost import count_cost
    from .recipe import Recipe
    from .trial import run_trial

    torch.set_num_threads(max(1, threads))
    arch = Arch.from_json(config["arch"])
    rec, bud, dep = Recipe.from_dict(recipe), Budget(**budget), Deploy(**deploy)
    cost = count_cost(arch, dep.image_size, dep.num_classes)
    history: list[float] = []

    def report_epoch(epoch: int, accuracy: float) -> bool:
        history.append(accuracy)
        if epoch < rec.epochs:
            partial = TrialOutcome(arch, "stopped_early", cost.gflops, cost.mparams, accuracy, epoch,
                                   tuple(history), 0.0, f"stopped early at epoch {epoch}", config["seed"], "ray")
            tune.report(_result(partial, epoch))
        return False  # Ray's Stopper/scheduler decide, on the driver

    outcome = run_trial(arch, rec, bud, dep, seed=config["seed"], data=_data(rec), should_stop=report_epoch,
                        backend="ray")
    tune.report(_result(outcome, outcome.epochs))


_DATA: dict[str, Any] = {}


def _data(recipe):
    """The recipe's dataset, loaded once per worker process (Ray reuses actors across trials)."""
    from .data import load_data

    key = json.dumps(recipe.to_dict(), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(recipe)
    return _DATA[key]


def _result(outcome: TrialOutcome, epoch: int) -> dict[str, Any]:
    # Ray's schedulers need a number in every result: untrained outcomes report accuracy 0 to Ray,
    # while the study records them by status (never as results).
    values = outcome.values or [0.0, outcome.gflops, outcome.mparams]
    return {**dict(zip(OBJECTIVES, values)), "epoch": epoch, "status": outcome.status,
            "outcome": json.dumps(outcome.to_attrs())}


def _outcome(result: dict[str, Any] | None) -> TrialOutcome | None:
    if not result or "outcome" not in result:
        return None
    attrs = json.loads(result["outcome"])
    return TrialOutcome(**{**attrs, "arch": Arch.from_json(attrs["arch"]), "history": tuple(attrs["history"])})


def _make_searcher(config, study, progress):
    """Ray's OptunaSearch on our study: it asks our sampler and we record each outcome ourselves."""
    from ray.tune.search.optuna import OptunaSearch

    from .search import make_sampler, owner_attrs
    from .trial import record_outcome

    space, base_seed = config.space, config.seed

    def define_by_run(trial) -> dict[str, Any]:
        arch = space.sample(trial)
        for k, v in owner_attrs().items():  # the driver owns the trial (for recovery on rerun)
            trial.set_user_attr(k, v)
        return {"arch": arch.to_json(), "seed": base_seed + trial.number}

    class StudySearch(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if trial_id in self._completed_trials:
                return
            outcome = _outcome(result)
            if error and outcome is not None:  # its last report was a provisional per-epoch one
                outcome = replace(outcome, status="failed", accuracy=None,
                                  reason=f"the Ray trial raised an error after epoch {outcome.epochs} (see Ray's log)")
            frozen = record_outcome(self._ot_study, self._ot_trials[trial_id], outcome,
                                    reason="the Ray trial raised an error before reporting (see Ray's log)",
                                    budget=config.budget)
            self._completed_trials.add(trial_id)
            progress.trial_done(frozen)

        # The study is the checkpoint: a rerun continues from it, so Ray need not pickle the searcher.
        def save_to_dir(self, *args, **kwargs) -> None:
            pass

        def save(self, checkpoint_path: str) -> None:
            pass

    sampler = make_sampler(config.sampler, config.seed, constrained=config.budget.limited)
    return StudySearch(space=define_by_run, metric=list(OBJECTIVES), mode=_MODES, sampler=sampler,
                       storage=study._storage, study_name=study.study_name)


def _rung_stopper(config, study):
    """se-nas's cost-aware rung rule as a Ray Stopper, evaluated on the driver."""
    from ray import tune

    from .earlystop import peers_from_study, should_stop

    rungs = frozenset(config.recipe.rungs)

    class RungStopper(tune.Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            epoch = int(result.get("epoch", 0))
            if result.get("status") != "stopped_early" or epoch not in rungs:
                return False
            return should_stop(epoch, float(result["accuracy"]), float(result["gflops"]),
                               peers_from_study(study), mparams=float(result["mparams"]))

        def stop_all(self) -> bool:
            return False

    return RungStopper()


def run_ray_search(config):
    """Run (or continue) ``config``'s search with Ray Tune; returns the ``optuna.Study``."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from .search import Progress, prepare_study, quiet_optuna, remaining, summarize

    # Ray's searcher asks and tells on the driver, not inside Study.optimize: the owner pid (set on the
    # driver) recovers its trials after a crash, so quiet_optuna's heartbeat filter applies here too.
    quiet_optuna()
    # Our own bar and per-trial lines are the progress display; Ray's newer console output ignores
    # verbose=0 and prints an experiment box and TensorBoard hints over them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    study = prepare_study(config)
    todo = remaining(study, config.n_trials)
    progress = Progress(study, config)
    try:
        if todo > 0:
            if not ray.is_initialized():
                kw = {} if config.ray_address in (None, "", "local") else {"address": config.ray_address}
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
            trainable = tune.with_parameters(
                _trainable, recipe=config.recipe.to_dict(), budget=config.budget.to_dict(),
                deploy=config.deploy.to_dict(), threads=max(1, int(config.cpus_per_trial)))
            trainable = tune.with_resources(trainable, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
            scheduler = stop = None
            if config.early_stop == "asha" and config.recipe.rungs:
                scheduler = ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max",
                                          max_t=config.recipe.epochs, grace_period=min(config.recipe.rungs))
            elif config.early_stop == "rungs" and config.recipe.rungs:
                stop = _rung_stopper(config, study)
            from .study import study_dir

            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=_make_searcher(config, study, progress),
                                            scheduler=scheduler, num_samples=todo,
                                            reuse_actors=True),
                run_config=tune.RunConfig(
                    name=study.study_name, stop=stop, verbose=0,
                    storage_path=str((study_dir(study.study_name, config.root) / "ray").resolve()),
                    failure_config=tune.FailureConfig(max_failures=0)),
            )
            tuner.fit()
    finally:
        progress.close()
    if config.progress:
        print(summarize(study, config))
    return study
