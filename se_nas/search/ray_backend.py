"""Ray Tune backend: the same trials on a Ray cluster, written into the same study.

Ray schedules the trials (one per candidate, with ``cpus_per_trial``/``gpus_per_trial`` each, on the
local machine or an existing cluster); Optuna still proposes them: our ``StudySearch``, a Ray
``Searcher``, asks and tells *our* study through Optuna's public ask/tell API. The searcher runs on
the driver, so only the driver touches the study: workers need the data and se-nas, not the
database. Every finished Ray trial becomes one study trial with the same user attributes the Optuna
backend writes, so report, export and compare do not care which backend ran.

Determinism: the answer depends on the seed and ``W`` (``--workers``: at most ``W`` Ray trials at
once; ``auto``: the cluster's CPUs, or GPUs with ``--gpus-per-trial``, divided by each trial's share,
read once at the start) only, never on timing, under the Optuna backend's rule
(``se_nas.search.optuna_backend.search_trials``; ``StudySearch``): trial *k* is asked only once trial
*k - W* has been told, trials are told in the order asked (a Ray trial that ends first waits on the
driver), and each trial's rungs judge by the study as it was when the trial was asked.

Early stopping on Ray: ``rungs`` applies se-nas's cost-aware rung rule (``se_nas.search.earlystop``) as a
``tune.Stopper`` on the driver; ``asha`` uses Ray's ASHA on validation accuracy alone (Ray's schedulers
take a single metric): it compares the trials that happen to have reported, so with ``asha`` the
answer depends on timing; ``none`` trains every candidate to the end.

Repeats: the searcher's ``suggest`` asks Optuna for a design, and a design the study has already
trained is answered from its record on the driver when it is asked (``se_nas.search.trial.repeat_outcome``;
seeds of the design still running count towards ``max_seeds_per_design``), exactly as on the Optuna
backend; only designs that need training become Ray trials. A streak of repeats ends with a fresh
design, or ends the search when the space has none left. Calibration and confirmation runs are Ray tasks as
well (``se_nas.search.ray_runs``), stored by the driver, so they land in the same study.

Clusters (docs/cluster.md): each trial records where it ran (user attribute ``node``: Ray node id,
IP, worker process, how many times that process loaded the data). A trial whose node is lost (a
preempted or crashed machine) or whose worker process died on a live node (killed, out of memory)
is failed with a reason naming the node or process (in its turn, in ask order) and enqueued again (``retry_of``, at most
``MAX_RETRIES`` deaths per design, ``se_nas.record.retries``); Ray runs it on the nodes left. A trial that raised an exception is failed
with it and not retried. Ray asks the searcher for trials until the study has ``n_trials`` counted
ones, so a retry takes the lost trial's place.

Resuming: the study is the source of truth. Rerunning the same command counts the study's finished
trials and runs only the rest; trials the dead driver left running are failed and retried, exactly as
with the Optuna backend.
"""
from __future__ import annotations

import json
import logging
import os
from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from ray.tune.search import Searcher

from ..design.arch import Arch
from ..record.retries import LOST, requeue, why_not_retried  # the one retry rule, per design
from ..record.study import Status, TrialOutcome, directions, objective_values, remaining
from .earlystop import Seen


def _trainable(config: dict[str, Any], **kwargs) -> None:
    """One Ray trial (see ``_train``). An exception in it is reported first, as the trial's last
    result, then raised: the driver tells it from a worker process that died (killed, out of
    memory), which reports nothing and is retried."""
    try:
        _train(config, **kwargs)
    except Exception as e:
        from ray import tune

        tune.report({**dict.fromkeys(kwargs["objectives"], 0.0), "epoch": 0, "status": Status.FAILED.value,
                     "error": f"{type(e).__name__}: {e}"[:500], "node": json.dumps(_node())})
        raise


def _train(config: dict[str, Any], *, recipe: dict, budget: dict, deploy: dict, threads: int,
           objectives: tuple[str, ...]) -> None:
    """Run the backend-agnostic trial function and report its outcome.

    A first report at epoch 0 says where the trial runs (before the data loads, which can be long:
    a node lost then is named too). Each epoch before the last is reported as it ends (provisionally
    "stopped_early", so that if a Stopper or ASHA ends the trial there, its last result is already a
    complete record); the last report carries the whole outcome.
    """
    import torch
    from ray import tune

    from ..design.budget import Budget, Deploy
    from ..design.cost import count_cost
    from ..design.recipe import Recipe
    from .trial import run_trial

    torch.set_num_threads(max(1, threads))
    arch = Arch.from_json(config["arch"])
    rec, bud, dep = Recipe.from_dict(recipe), Budget(**budget), Deploy(**deploy)
    cost = count_cost(arch, dep.image_size, dep.num_classes)
    lat = bud.latency_ms(arch) if "latency" in objectives else None
    history: list[float] = []
    untrained = TrialOutcome(arch, Status.OVER_BUDGET, cost.gflops, cost.mparams, latency_ms=lat)  # accuracy 0
    tune.report({**_metrics(untrained, objectives), "epoch": 0, "status": Status.RUNNING.value,
                 "node": json.dumps(_node())})

    def report_epoch(epoch: int, accuracy: float) -> bool:
        history.append(accuracy)
        if epoch < rec.epochs:
            partial = TrialOutcome(arch, Status.STOPPED_EARLY, cost.gflops, cost.mparams, accuracy, epoch,
                                   tuple(history), 0.0, f"stopped early at epoch {epoch}", config["seed"], "ray",
                                   latency_ms=lat)
            tune.report(_result(partial, epoch, objectives))
        return False  # Ray's Stopper/scheduler decide, on the driver

    outcome = run_trial(arch, rec, bud, dep, seed=config["seed"], data=_data(rec), should_stop=report_epoch,
                        backend="ray")
    tune.report(_result(replace(outcome, latency_ms=lat), outcome.epochs, objectives))


_DATA: dict[str, Any] = {}
_LOADS = [0]  # how many times this worker process loaded a dataset (recorded with the node)


def _data(recipe):
    """The recipe's dataset, loaded once per worker process (Ray reuses actors across trials)."""
    from ..nn.data import load_data

    key = json.dumps(recipe.to_dict(), sort_keys=True)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = load_data(recipe)
        _LOADS[0] += 1
    return _DATA[key]


def _node() -> dict[str, Any]:
    """Where this Ray trial runs: the Ray node id and IP, and the worker process (with how many
    times it loaded data: 1 while Ray reuses it)."""
    import ray

    return {"id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(), "data_loads": _LOADS[0]}


def _metrics(outcome: TrialOutcome, objectives) -> dict[str, float]:
    # Ray's schedulers need a number in every result: untrained outcomes report accuracy 0 to Ray,
    # while the study records them by status (never as results).
    values = outcome.values_for(objectives) or objective_values(replace(outcome, accuracy=0.0), objectives)
    return dict(zip(objectives, values))


def _result(outcome: TrialOutcome, epoch: int, objectives) -> dict[str, Any]:
    return {**_metrics(outcome, objectives), "epoch": epoch, "status": outcome.status.value,
            "outcome": json.dumps(outcome.to_attrs()), "node": json.dumps(_node())}  # Ray flattens dicts


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _lost_reason(node: dict[str, Any] | None, epochs: int) -> str | None:
    """Why a Ray trial that errored ended, if its node is gone (a lost machine, not a bug); else None.
    Ray reports an actor lost with its node once the cluster knows the node is dead; allow 2 s."""
    import time

    if not node:
        return None
    for _ in range(4):
        if node["id"] not in _alive_nodes():
            return f"lost with Ray node {node['id'][:12]} ({node['ip']}) after epoch {epochs}"
        time.sleep(0.5)
    return None


def _outcome(result: dict[str, Any] | None) -> TrialOutcome | None:
    if not result or "outcome" not in result:
        return None
    attrs = json.loads(result["outcome"])
    return TrialOutcome(**{**attrs, "arch": Arch.from_json(attrs["arch"]), "history": tuple(attrs["history"])})


@dataclass
class _Asked:
    """A study trial the searcher asked and has not told yet: its design and training seed, whether
    Ray trains it (else it was answered from the record when asked: ``outcome`` is known), and once
    its Ray trial ended, Ray's last result."""

    trial: Any
    arch: Arch
    seed: int
    trains: bool
    outcome: TrialOutcome | None = None  # a repeat's (or a known poison design's) answer
    seen: Seen | None = None  # what its rungs judge by: the study when it was asked
    ended: bool = False
    result: dict | None = None
    error: bool = False


class StudySearch(Searcher):
    """Ray Tune's searcher on our study, through Ray's public ``Searcher`` API and Optuna's ask/tell,
    under the Optuna backend's rule (``se_nas.search.optuna_backend.search_trials``), so the answer
    depends on the seed and ``W`` = ``config.workers`` (concurrent Ray trials) only, never on timing:

    - trials are told in the order they were asked: a Ray trial that ends early waits here
      (``on_trial_complete`` files its result; ``_drain`` tells the ended ones at the head);
    - trial *k* is asked only once trial *k - W* has been told, and before the next one is told:
      ``suggest`` returns None ("not now", Ray asks again) while ``W`` trials train, and nothing is
      told while an ask is due;
    - a repeat (``se_nas.search.trial.repeat_outcome``, seeds of the design still running counted) is
      answered from the record when asked, takes no Ray trial and is told in its turn;
    - each trial's rungs judge by ``seen``, the study when it was asked (``_rung_stopper``);
    - a trial lost with its node or worker process is failed and enqueued again when its turn to be
      told comes (the one retry rule), and the next ask runs it.

    Everything lives in the study: Ray's checkpoint of the searcher is not needed."""

    def __init__(self, config, study, on_done):
        from ..record.samplers import make_sampler, process_seed
        from ..record.study import counted

        modes = ["max" if d == "maximize" else "min" for d in directions(config.objectives)]
        super().__init__(metric=list(config.objectives), mode=modes)
        # This process's sampler, as the Optuna backend's first process (a public attribute of the study).
        study.sampler = make_sampler(config.sampler, process_seed(config.seed, 0, counted(study)[0],
                                                                  config.storage is not None))
        self.config, self.study, self.on_done = config, study, on_done
        # W, concurrent Ray trials: stages._resolve_workers has made config.workers a number
        self.window = config.workers if isinstance(config.workers, int) else \
            concurrent_trials(config, remaining(study, config.n_trials))[0]
        self.inflight: deque[_Asked] = deque()  # asked, not yet told, in ask order
        self.by_id: dict[str, _Asked] = {}  # Ray trial id -> its trial, while Ray runs it
        self.last: dict[str, dict] = {}  # Ray trial id -> its last result (its node is recorded with the first)
        self.streak = 0  # repeats told in a row
        self.exhausted = False  # every design of the space is known

    def __getstate__(self):
        # Ray pickles the searcher with the Tuner; the progress display stays here, it holds the
        # terminal (a pytest or Jupyter stream can't be pickled).
        return {k: v for k, v in self.__dict__.items() if k != "on_done"}

    def ask_due(self) -> bool:
        """Whether the next trial is to be asked now: fewer than ``W`` trials train, and trials are left."""
        from .trial import REPEAT_STREAK

        return (not self.exhausted and sum(p.trains for p in self.inflight) < self.window
                and len(self.inflight) < self.window + REPEAT_STREAK
                and remaining(self.study, self.config.n_trials) > 0)

    def suggest(self, trial_id: str):
        # Ray asks for trials until the searcher says it is finished: when nothing is left to ask
        # (the study has n_trials counted ones or running) and nothing is in flight (a lost trial may
        # still be retried).
        from .optuna_backend import prepare_trial, ask

        self._drain()
        while self.ask_due():
            p, seen = prepare_trial(self.study, self.config, ask(self.study))
            if p.trains:
                asked = _Asked(p.trial, p.arch, p.seed, True, seen=seen)
                self.inflight.append(asked)
                self.by_id[trial_id] = asked
                self._drain()  # trial k is asked: trial k - W + 1 may be told now
                return {"arch": p.arch.to_json(), "seed": p.seed}
            # answered from the record, here on the driver: told in its turn (at once if nothing is before it)
            self.inflight.append(_Asked(p.trial, p.arch, p.seed, False, replace(p.outcome, backend="ray"), ended=True))
            self._drain()
        return None if self.inflight else Searcher.FINISHED

    def seen(self, trial_id: str) -> Seen | None:
        """What the rungs of Ray trial ``trial_id`` judge by (None once it ended)."""
        asked = self.by_id.get(trial_id)
        return asked.seen if asked is not None else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # The node is known from the first report on, so a trial lost with its node names it
        # (Ray gives no result with the error of a trial whose node died).
        if trial_id in self.by_id:
            self.record_node(trial_id, result)

    def record_node(self, trial_id: str, result: dict, final: bool = False) -> None:
        if "node" in result and (final or trial_id not in self.last):  # the final one has data_loads
            self.by_id[trial_id].trial.set_user_attr("node", json.loads(result["node"]))
        self.last[trial_id] = result

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.by_id:
            return
        result = result or self.last.get(trial_id) or {}
        self.record_node(trial_id, result, final=True)
        self.last.pop(trial_id)
        asked = self.by_id.pop(trial_id)
        asked.result, asked.error, asked.ended = result, error, True
        self._drain()

    def _drain(self, closing: bool = False) -> None:
        """Tell the ended trials at the head of the line, in ask order; a trained one waits while an
        ask is due (the trial asked then must see the study without it), unless ``closing``."""
        while self.inflight and self.inflight[0].ended:
            if self.inflight[0].trains and not closing and self.ask_due():
                return
            self._tell(self.inflight.popleft())

    def _tell(self, asked: _Asked) -> None:
        from .trial import REPEAT_STREAK, propose_fresh, record_outcome

        if not asked.trains:
            frozen = record_outcome(self.study, asked.trial, asked.outcome, budget=self.config.budget)
        else:
            trial, result = asked.trial, asked.result or {}
            outcome = _outcome(result)
            reason, retry = "the Ray trial raised an error before its first epoch (see Ray's log)", False
            if asked.error or "error" in result:
                reason, retry = _failure(self.study, trial, result, outcome.epochs if outcome else 0)
                if outcome is not None:  # its last report was a provisional per-epoch one
                    outcome = replace(outcome, status=Status.FAILED, accuracy=None, reason=reason)
                if "error" not in result:  # its node or worker process died: a death of the design
                    trial.set_user_attr(LOST, True)
            frozen = record_outcome(self.study, trial, outcome, reason=reason, budget=self.config.budget)
            if retry:
                requeue(self.study, frozen.params, frozen.number)
        self.on_done(frozen)
        # A streak of repeats ends with a fresh design, as on the Optuna backend.
        self.streak = self.streak + 1 if frozen.user_attrs.get("status") == Status.REPEAT.value else 0
        if self.streak >= REPEAT_STREAK:
            if not propose_fresh(self.study, self.config.space, self.config.seed + frozen.number):
                self.exhausted = True  # every design of the space is known: nothing new to learn
            self.streak = 0

    def close(self) -> None:
        """After Ray's run (or its interruption): tell the ended trials at the head; fail the rest as
        interrupted and enqueue them again, so a rerun trains them."""
        from .optuna_backend import interrupt_trial, PendingTrial

        self._drain(closing=True)
        while self.inflight:
            p = self.inflight.popleft()
            interrupt_trial(self.study, PendingTrial(p.trial, p.arch, p.seed, p.trains))

    # The study is the checkpoint: a rerun continues from it, so Ray need not save the searcher.
    def save_to_dir(self, *args, **kwargs) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def _failure(study, trial, result: dict[str, Any], epochs: int) -> tuple[str, bool]:
    """Why the Ray trial of study trial ``trial`` failed, and whether it is retried. An exception in
    the trial (its last report names it) is not retried, as on the Optuna backend; a trial whose
    node was lost, or whose worker process died on a live node (killed, out of memory), runs again
    under the one retry rule (``se_nas.record.retries``: at most ``MAX_RETRIES`` deaths per design)."""
    if "error" in result:
        return f"{result['error']} (see Ray's log)", False
    node = json.loads(result.get("node", "null"))
    reason = _lost_reason(node, epochs) or (
        f"its Ray worker process {node['pid']} on {node['ip']} died after epoch {epochs} (killed, or out of memory)"
        if node else "its Ray worker died before its first report (see Ray's log)")
    why_not = why_not_retried(trial, study.get_trials(deepcopy=False))
    return (f"{reason}; {why_not}", False) if why_not else (reason, True)


def _make_searcher(config, study, progress):
    """Our searcher on ``study``: it asks the study's sampler, and records each outcome itself."""
    return StudySearch(config, study, progress.trial_done)


def _rung_stopper(config, searcher: StudySearch):
    """se-nas's noise-aware rung rule as a Ray Stopper, evaluated on the driver: each trial is judged
    by what the study held when it was asked (``StudySearch.seen``), never by what happened to
    finish meanwhile."""
    from ray import tune

    from .earlystop import should_stop

    rungs = frozenset(config.recipe.rungs)

    class RungStopper(tune.Stopper):
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            epoch = int(result.get("epoch", 0))
            if result.get("status") != Status.STOPPED_EARLY.value or epoch not in rungs:
                return False
            seen = searcher.seen(trial_id)
            if seen is None:
                return False
            peers, noise = seen()
            return should_stop(epoch, float(result["accuracy"]), float(result["gflops"]), peers,
                               noise.per_epoch.get(epoch), mparams=float(result["mparams"]))

        def stop_all(self) -> bool:
            return False

    return RungStopper()


def concurrent_trials(config, trials_left: int) -> tuple[int, str | None]:
    """``W`` for ``--backend ray``: at most this many Ray trials at once, and the line saying how it was
    chosen (None when nothing is worth saying). ``--workers N``: N (no more than the trials left);
    ``--workers auto``: what the cluster holds now, its CPUs (and GPUs, with ``gpus_per_trial``)
    divided by each trial's share, read once here: the answer depends on the seed and ``W``."""
    import ray

    left = max(trials_left, 1)
    if config.workers != "auto":
        n = max(1, min(config.workers, left))
        return n, (None if n == config.workers else
                   f"--workers {config.workers}: {n} concurrent Ray trial{'s' if n != 1 else ''} "
                   f"({left} trial{'s' if left != 1 else ''} left to start)")
    connect(config.ray_address)
    res = ray.cluster_resources()
    shares = [("CPU", res.get("CPU", 0.0), config.cpus_per_trial)]
    if config.gpus_per_trial > 0:
        shares.append(("GPU", res.get("GPU", 0.0), config.gpus_per_trial))
    fits = {kind: int(have / each + 1e-9) for kind, have, each in shares}
    n = max(1, min(min(fits.values()), left))
    held = ", ".join(f"{have:g} {kind}s / {each:g} per trial" for kind, have, each in shares)
    return n, (f"--workers auto: {n} concurrent Ray trial{'s' if n != 1 else ''} (the cluster's {held}"
               f"{f'; {left} left to start' if n == left < min(fits.values()) else ''}); the answer depends on the "
               f"seed and this count, so the same --seed with --workers {n} gives it again")


def connect(ray_address: str | None) -> None:
    """Join the Ray cluster at ``ray_address`` (``auto`` or HOST:PORT), or start a local Ray (None or
    ``local``); nothing if this process is connected already."""
    import ray

    if not ray.is_initialized():
        # No address: a new local Ray of our own ("local"), never a cluster some other program started
        # on this machine, which a bare ray.init() would join.
        address = "local" if ray_address in (None, "", "local") else ray_address
        # While Ray starts, only its errors show: its notices that it turned on token authentication
        # (and saved a token) are stray lines in our progress display on every run, with nothing for
        # the user to do. (Ray's logger, not its private module's: a public name.)
        ray_log = logging.getLogger("ray")
        level = ray_log.level
        ray_log.setLevel(logging.ERROR)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        finally:
            ray_log.setLevel(level)
        if address == "local":  # none of its processes may outlive this one, even by a SIGKILL
            from pathlib import Path

            from .ray_watchdog import start

            start(Path(ray.__file__).parent)


def run(study, config, progress, data=None) -> None:
    """Run trials as Ray Tune trials until the study has ``config.n_trials`` counted ones."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ..record.storage import study_dir

    # Our own bar and per-trial lines are the progress display; Ray's newer console output ignores
    # verbose=0 and prints an experiment box and TensorBoard hints over them.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    todo = remaining(study, config.n_trials)
    if todo <= 0:
        return
    connect(config.ray_address)
    trainable = tune.with_parameters(
        _trainable, recipe=config.recipe.to_dict(), budget=config.budget.to_dict(),
        deploy=config.deploy.to_dict(), threads=max(1, int(config.cpus_per_trial)), objectives=config.objectives)
    trainable = tune.with_resources(trainable, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
    scheduler = stop = None
    if config.early_stop == "asha" and config.recipe.rungs:
        scheduler = ASHAScheduler(time_attr="epoch", metric="accuracy", mode="max",
                                  max_t=config.recipe.epochs, grace_period=min(config.recipe.rungs))
    searcher = _make_searcher(config, study, progress)
    if config.early_stop == "rungs" and config.recipe.rungs:
        stop = _rung_stopper(config, searcher)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1, reuse_actors=True,
                                    max_concurrent_trials=searcher.window),
        run_config=tune.RunConfig(
            name=study.study_name, stop=stop, verbose=0,
            storage_path=str((study_dir(study.study_name, config.root) / "ray").resolve()),
            failure_config=tune.FailureConfig(max_failures=0)),
    )
    try:
        tuner.fit()
    finally:
        searcher.close()
