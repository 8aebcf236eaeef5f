"""One-shot search: train one SE supernet, rank thousands of designs through it, confirm the best
standalone.

The one-shot strategy (``se_nas.search.stages.strategies``; ``se-nas search --strategy oneshot``, or
``run_search(SearchConfig(strategy="oneshot"))``) runs these stages:

1. **calibrate**: as the multi-trial search (``se_nas.search.confirm.calibrate``): plain and r=16 under a few
   seeds, the proxy's seed noise;
2. **train the supernet** (``se_nas.nn.supernet``) with the ordinary trainer (``se_nas.nn.train``: the
   recipe's optimizer, schedule, AMP, channels_last, progress, a checkpoint after every epoch), one
   path per step drawn fair per choice, within the budget (``sampling="uniform"``), or the sandwich
   rule (the widest and the narrowest path within the budget plus a random one, their losses summed;
   Yu & Huang, BigNAS/slimmable networks); ``epochs`` defaults to ``SUPERNET_EPOCHS`` times the
   recipe's. A step whose loss is not finite or ``BROKEN`` times that of a uniform guess is drawn
   again rather than trained: some designs of the default space break (docs/proxy.md), and their
   gradients would break the weights every path shares;
3. **rank**: the study's Optuna sampler proposes designs; each is costed first (over budget: recorded,
   never evaluated); a design within budget is a path: its BatchNorm statistics are recalibrated on a
   few training batches, then its accuracy on the proxy's validation split, discounted by the
   design's initialisation check (``PathScore``: weight sharing cannot see whether a design trains
   from scratch), is the objective. Every
   path lands in the study as a trial of today's format with ``fidelity: "supernet"``: reports and
   the trial table show it, and ``se_nas.record.results`` never averages it with standalone trainings;
4. **confirm**: the supernet's best design within budget and the next designs of its front, r=16 and
   the plain backbone are trained standalone under the same K seeds (``se_nas.search.confirm``); the final
   front and the finding come from those runs only.

Rerunning the same command continues every stage: the supernet resumes from its checkpoint (or is
read back from it when finished), ranking continues towards ``n_trials`` designs, and confirmation
runs already stored are reused. Path evaluations run in this process, or with ``--backend ray`` on a
pool of Ray actors (``RayPaths``); either way only this process writes the study.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from dataclasses import replace
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

import torch

from ..design.arch import Arch
from ..design.budget import Budget, Deploy
from ..design.cost import count_cost
from ..record.study import SUPERNET, SearchError, Status, TrialOutcome, counted, records
from ..nn.supernet import (DEFAULT_GATE_WEIGHTS, Supernet, check_supernet_space, narrowest_path, recalibrate_bn,
                       sample_path, widest_path)

SUPERNET_EPOCHS = 2  # supernet epochs per epoch of the recipe, by default
# A path's cost: 1 calibration batch and a quarter of the validation split ranked the 23 designs of
# docs/oneshot.md as 4 batches and the whole split did (tau 0.33 and 0.35, calibration draws apart by
# 0.02-0.05) at a quarter of the CPU time.
CALIBRATION_BATCHES = 1  # training batches per path for its BatchNorm statistics
VAL_FRACTION = 0.25  # of the validation split (its first images) a path is evaluated on
# Weight sharing scores a design with weights every path trained together, so it cannot see whether the
# design trains from scratch; on the digits proxy that decides most of the standalone ranking: a gate
# that scales the residual stream (PRE, POST, identity; tanh and ReLU most) shrinks the signal reaching
# the classifier at initialisation, and such designs train slower or not at all. A path's accuracy is
# discounted by the share of the plain backbone's signal its own freshly built model passes
# (``InitCheck``), the median over these initialisations: far from every training seed (trials
# --seed + trial number, confirmation CONFIRM_SEED + k), or the check would pick designs for the very
# initialisations the confirmation then trains; docs/oneshot.md, "The initialisation check".
INIT_SEEDS = (2**40, 2**40 + 1, 2**40 + 2)
RETRIES = 8  # draws of a training step whose loss is not finite before the training fails
# a step whose gradients are not finite is skipped, never written into the shared weights (unclipped
# otherwise: every figure of docs/oneshot.md was measured so); one such step ended a 10-epoch training
# with NaN weights in docs/oneshot_vs_multitrial.md's rerun
MAX_GRAD_NORM = math.inf
BROKEN = 3.0  # a path whose loss is this many times that of a uniform guess (ln C) or more is not trained


# --- training -------------------------------------------------------------------------------------
class PathDraw:
    """The paths of one training step, drawn within the budget (``sampling``: ``uniform`` or
    ``sandwich``); called by the trainer as its ``step_loss``."""

    def __init__(self, space, budget: Budget, deploy: Deploy, sampling: str = "uniform"):
        if sampling not in SAMPLING:
            raise SearchError(f"unknown supernet sampling {sampling!r}; allowed: {', '.join(SAMPLING)}")
        self.space, self.budget, self.deploy, self.sampling = space, budget, deploy, sampling
        self._fits: dict[str, bool] = {}
        self.drawn: list[Arch] = []  # every path trained, in order (tests read it)
        self.broken: list[Arch] = []  # paths whose loss was not finite: not trained on that step

    def fits(self, arch: Arch) -> bool:
        if arch.id not in self._fits:
            self._fits[arch.id] = self.budget.fits(count_cost(arch, self.deploy.image_size, self.deploy.num_classes), arch)
        return self._fits[arch.id]

    def within(self, draw, rng: random.Random, tries: int = 1000) -> Arch | None:
        for _ in range(tries):
            arch = draw(self.space, rng)
            if self.fits(arch):
                return arch
        return None

    def paths(self, rng: random.Random) -> list[Arch]:
        return [a for a in (self.within(d, rng) for d in SAMPLING[self.sampling]) if a is not None]

    def __call__(self, model, x, y, loss_fn):
        # torch's RNG is reseeded by the trainer every epoch: a resumed run draws the same paths
        rng = random.Random(int(torch.randint(0, 2**62, ())))
        for _ in range(RETRIES):
            paths = self.paths(rng)
            if not paths:
                raise SearchError(f"no design of space {self.space.name!r} within {self.budget.describe()} was drawn "
                                  f"in 1000 tries; the budget leaves too few")
            logits = [model.set_path(a)(x) for a in paths]
            losses = torch.stack([loss_fn(z, y) for z in logits])
            # a path that breaks (a NaN/inf loss, or one far worse than a uniform guess) must not write
            # its gradients into the weights every path shares: the step is drawn again; the trainer
            # fails only if every retry breaks
            worst = float(losses.detach().max())  # NaN if any is
            if math.isfinite(worst) and worst <= BROKEN * math.log(logits[0].shape[1]):
                break
            self.broken += paths
        self.drawn += paths
        return losses.mean()  # the sandwich's paths share one step of the recipe's size


# What one training step draws: each function gives a path (retried until one is within the budget).
SAMPLING = {"uniform": (sample_path,), "sandwich": (widest_path, narrowest_path, sample_path)}


def train_supernet(space, recipe, data, *, budget: Budget = Budget(), deploy: Deploy | None = None,
                   epochs: int | None = None, sampling: str = "sandwich", seed: int = 0,
                   checkpoint: str | Path | None = None, device=None, on_progress=None, progress: bool = False,
                   gate_weights: str = DEFAULT_GATE_WEIGHTS):
    """Train the supernet of ``space`` under ``recipe`` (its proxy: stem, width, data; epochs
    ``epochs``, default ``SUPERNET_EPOCHS`` x the recipe's). Returns ``(supernet, TrainResult,
    PathDraw)``. With ``checkpoint`` it resumes an interrupted training and, once finished, reads the
    trained supernet back instead of training again."""
    from ..nn.train import seed_everything, train
    from .trial import pinned

    deploy = deploy or space.deploy
    r = supernet_recipe(recipe, epochs, seed)
    draw = PathDraw(space, budget, deploy, sampling)
    seed_everything(seed)
    net = Supernet(space, data.num_classes, stem=r.stem, width=r.width, gate_weights=gate_weights)
    if sampling == "sandwich":
        # several paths per step: the fused SE kernels read the slot's path at backward time, so the
        # sandwich keeps autograd's record of each path
        from ..nn.fused import set_fast_se

        set_fast_se(net, False)
    result = train(net, pinned(r), data, device=device, checkpoint=checkpoint, progress=progress,
                   on_progress=on_progress, step_loss=draw, max_grad_norm=MAX_GRAD_NORM)
    return net, result, draw


def supernet_recipe(recipe, epochs: int | None, seed: int):
    """The recipe the supernet trains under: the trial recipe with its epochs and seed, no rungs."""
    epochs = SUPERNET_EPOCHS * recipe.epochs if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise SearchError(f"supernet epochs must be a positive integer, got supernet_epochs={epochs!r}")
    warm = min(recipe.warmup_epochs * epochs / recipe.epochs, epochs - 1)
    return replace(recipe, epochs=epochs, seed=seed, rungs=(), warmup_epochs=warm)


# --- ranking --------------------------------------------------------------------------------------
class PathScore(NamedTuple):
    """What ranking a design through the supernet gives: ``score``, the objective the sampler and the
    confirmation read, is the path's supernet ``accuracy`` discounted by ``signal``, the share of the
    plain backbone's signal the design's own model passes at initialisation (``InitCheck``; None:
    not checked, the score is the accuracy)."""

    score: float
    accuracy: float
    signal: float | None = None

    @property
    def reason(self) -> str:
        acc = f"supernet path accuracy {self.accuracy:.4f} (BatchNorm recalibrated)"
        if self.signal is None:
            return f"{acc}, not a standalone training"
        return (f"{acc} x {min(1.0, self.signal):.3f}: its model at initialisation passes {self.signal:.3f} of the "
                f"plain backbone's signal; not a standalone training")


def as_score(got) -> PathScore:
    """An evaluator's result as a ``PathScore`` (a bare number is an accuracy, not discounted)."""
    return got if isinstance(got, PathScore) else PathScore(float(got), float(got))


def discounted(accuracy: float, signal: float | None) -> PathScore:
    """The one-shot objective: the supernet accuracy, discounted by the initialisation signal below the
    plain backbone's (a design passing at least as much is ranked by its accuracy alone)."""
    return PathScore(accuracy if signal is None else accuracy * min(1.0, signal), accuracy, signal)


def logit_scale(model, x: torch.Tensor) -> float:
    """The standard deviation of ``model``'s logits on batch ``x`` in training mode (batch statistics,
    as a training's first step sees them), without gradients; the model is left as it was (mode,
    BatchNorm running statistics)."""
    was, buffers = model.training, [(b, b.clone()) for b in model.buffers()]
    try:
        model.train()
        with torch.no_grad():
            return float(model(x).float().std())
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        model.train(was)


class InitCheck:
    """A design's initialisation signal: how much of the plain backbone's signal its freshly built
    proxy passes to the classifier. Under each of ``seeds`` the design's model is the plain backbone
    of that seed with the design's SE added (its excitations drawn under the same seed; every other
    tensor the plain backbone's, so the two differ by the SE alone), and its logit scale on batch
    ``x`` (``logit_scale``) is divided by the plain backbone's; the signal is the median over the
    seeds. SE on a residual branch leaves it at exactly 1 (the branch's last BatchNorm starts at
    zero); a gate that scales the stream moves it. Torch's global random state is left as it was."""

    def __init__(self, plain: Arch, recipe, num_classes: int, x: torch.Tensor, seeds: tuple[int, ...], device):
        self.recipe, self.num_classes, self.x, self.device = recipe, num_classes, x, device
        self.plain = {s: self._build(plain, s).state_dict() for s in seeds}
        self.reference = {s: logit_scale(self.model(plain, s), x) for s in seeds}

    def _build(self, arch: Arch, seed: int):
        from ..nn.build import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(arch, self.num_classes, stem=self.recipe.stem, width=self.recipe.width)

    def model(self, arch: Arch, seed: int):
        """The model the check measures for ``arch`` under ``seed``."""
        model = self._build(arch, seed)
        missing, unexpected = model.load_state_dict(self.plain[seed], strict=False)
        if unexpected or any(".se_" not in f".{k}" for k in missing):  # only the design's SE is its own
            raise SearchError(f"design {arch.id} is not the plain backbone plus SE: {unexpected or missing}")
        return model.to(self.device)

    def __call__(self, arch: Arch) -> float:
        return statistics.median(logit_scale(self.model(arch, s), self.x) / ref for s, ref in self.reference.items())


class PathEvaluator:
    """A design's ``PathScore`` through the supernet: the path's accuracy on the first ``val_fraction``
    of the proxy's validation split, BatchNorm statistics recalibrated on the same ``batches`` training
    batches for every path (drawn under ``calibration_seed``, default the recipe's seed), discounted by
    its initialisation signal (``init_seeds``, the seeds of the models it is measured on; empty: no
    discount) on the first calibration batch."""

    def __init__(self, supernet, recipe, data, device=None, batches: int = CALIBRATION_BATCHES,
                 val_fraction: float = VAL_FRACTION, calibration_seed: int | None = None,
                 init_seeds: tuple[int, ...] = INIT_SEEDS):
        from ..nn.train import _batches, pick_device

        self.net = supernet
        self.device = pick_device(recipe.device if device is None else str(device))
        self.net.to(self.device)
        bs = recipe.batch_size
        seed = recipe.seed if calibration_seed is None else calibration_seed
        train = _batches(data.train, bs, shuffle=True, seed=seed, drop_last=len(data.train) >= bs,
                         num_workers=recipe.num_workers, pin=False)
        self.calibration = [x.to(self.device) for x, _ in _first(train, batches)]
        val = _batches(data.val, 2 * bs, shuffle=False, seed=0, drop_last=False, num_workers=recipe.num_workers,
                       pin=False)
        if not 0 < val_fraction <= 1:
            raise SearchError(f"a path's validation fraction must be in (0, 1], got val_fraction={val_fraction!r}")
        self.val, left = [], max(1, round(val_fraction * len(data.val)))
        for x, y in val:
            if left <= 0:
                break
            self.val.append((x[:left].to(self.device), y[:left].to(self.device)))
            left -= len(y)
        self.check = (InitCheck(supernet.space.plain(), recipe, data.num_classes, self.calibration[0], tuple(init_seeds),
                                self.device) if init_seeds else None)

    def __call__(self, arch: Arch) -> PathScore:
        from ..nn.train import evaluate

        self.net.set_path(arch)
        recalibrate_bn(self.net, self.calibration)
        accuracy = evaluate(self.net, self.val, self.device)
        signal = self.check(arch) if self.check is not None else None
        return discounted(accuracy, signal)


def _first(it, n: int) -> list:
    out = []
    for item in it:
        if len(out) == n:
            break
        out.append(item)
    return out


class InProcess:
    """Path evaluations in this process, one at a time: the pool ``rank`` reads (``capacity``,
    ``submit``, ``next``) around an ``evaluate(arch) -> PathScore`` callable (or a bare accuracy). The Ray pool
    (``RayPaths``) has the same three members."""

    capacity = 1

    def __init__(self, evaluate):
        self.evaluate, self.queue = evaluate, []

    def submit(self, arch: Arch) -> None:
        self.queue.append(arch)

    def next(self) -> tuple[Arch, PathScore, float]:
        arch, start = self.queue.pop(0), time.perf_counter()
        return arch, as_score(self.evaluate(arch)), time.perf_counter() - start


class PathActor:
    """One Ray actor's path evaluator (``ray.remote`` is applied in ``RayPaths``, so this module
    imports without Ray): the supernet from the object store, the recipe's data loaded on the worker,
    the same calibration batches as in the driver; deterministic, so it gives the accuracy this process
    would (at the same torch thread count: ``cpus_per_trial`` threads, one by default, as the driver's)."""

    def __init__(self, supernet, recipe: dict, threads: int):
        import torch

        from .ray_backend import _data
        from ..design.recipe import Recipe

        torch.set_num_threads(max(1, threads))
        rec = Recipe.from_dict(recipe)
        self.evaluator = PathEvaluator(supernet, rec, _data(rec))

    def evaluate(self, arch: str) -> tuple[tuple, float]:
        start = time.perf_counter()
        return tuple(self.evaluator(Arch.from_json(arch))), time.perf_counter() - start


def pool_size(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many evaluators the Ray cluster's resources hold at the given reservation each."""
    import ray

    have = ray.cluster_resources()
    n = int(have.get("CPU", 0) // cpus_per_trial)
    if gpus_per_trial:
        n = min(n, int(have.get("GPU", 0) // gpus_per_trial))
    if n < 1:
        raise SearchError(f"the Ray cluster has {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs: no room "
                          f"for one path evaluator at --cpus-per-trial {cpus_per_trial:g} --gpus-per-trial "
                          f"{gpus_per_trial:g}")
    return n


class RayPaths:
    """Path evaluations on Ray (``--backend ray``): the supernet goes once into Ray's object store, and
    a pool of ``PathActor``s, as many as the cluster's resources allow at ``cpus_per_trial`` and
    ``gpus_per_trial`` each, evaluates the designs ``rank`` sends (``capacity`` in flight, ``submit``,
    ``next``); only this process touches the study. ``evaluated`` lists the designs the actors
    evaluated, in the order their results came back.

    A lost actor (its node died, its process was killed) takes no result with it: its design goes to
    the next free actor and the pool shrinks by one; when none is left, the search stops with one
    line, and a rerun continues from the study."""

    def __init__(self, supernet, recipe, *, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 actors: int | None = None, most: int | None = None):
        import ray

        n = actors or min(pool_size(cpus_per_trial, gpus_per_trial), most or 1 << 30)
        weights = ray.put(supernet.cpu())  # once; every actor reads it from the object store
        actor = ray.remote(PathActor).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial)
        self.actors = [actor.remote(weights, recipe.to_dict(), int(cpus_per_trial)) for _ in range(n)]
        self.started = n
        self.idle = list(self.actors)
        self.running: dict = {}  # ObjectRef of an evaluation -> (actor, design)
        self.queue: list[Arch] = []  # designs waiting for an actor (a lost actor's first)
        self.evaluated: list[Arch] = []
        self.lost: list[str] = []  # why each lost actor was lost

    @property
    def capacity(self) -> int:
        return len(self.actors)

    def submit(self, arch: Arch) -> None:
        self.queue.append(arch)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            actor, arch = self.idle.pop(), self.queue.pop(0)
            self.running[actor.evaluate.remote(arch.to_json())] = (actor, arch)

    def next(self) -> tuple[Arch, PathScore, float]:
        """The next design whose evaluation ends, its score and the seconds it took on its actor."""
        import ray
        from ray.exceptions import RayActorError

        while self.running:
            [ref], _ = ray.wait(list(self.running), num_returns=1)
            actor, arch = self.running.pop(ref)
            try:
                got, seconds = ray.get(ref)
            except RayActorError as e:  # the actor is gone: its design goes to another one
                self.actors.remove(actor)
                self.lost.append(str(e).strip().splitlines()[0])
                self.queue.insert(0, arch)
                self._dispatch()
                continue
            self.idle.append(actor)
            self._dispatch()
            self.evaluated.append(arch)
            return arch, PathScore(*got), seconds
        raise SearchError(f"every Ray actor evaluating supernet paths was lost ({len(self.lost)}, the last: "
                          f"{self.lost[-1] if self.lost else 'none started'}); rerun the same command to continue")

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors, self.idle, self.running = [], [], {}


def rank(study, space, budget: Budget, deploy: Deploy, evaluate, n_designs: int, *, seed: int = 0,
         log=None, advance=None) -> int:
    """Propose designs with the study's sampler until it holds ``n_designs`` counted trials; each is
    costed first (over budget: recorded, never evaluated) and evaluated as a supernet path:
    ``evaluate`` is ``evaluate(arch) -> PathScore`` (or an accuracy) or a pool of evaluators (``InProcess``'s members),
    kept busy with as many designs as its ``capacity``, results told as they come back. Returns the
    number of paths evaluated.

    The sampler works on an in-memory copy of the study (``_mirror``): a design proposed again (the
    samplers do it often, about twice per new design after 2,000) is told its accuracy there (status
    ``repeat``), so the sampler learns it, but it is not written to the study; after
    ``REPEAT_STREAK`` repeats in a row a fresh design is proposed. Evaluated and over-budget designs
    are written to the study as finished trials, each in one write (``Study.add_trial``): the study
    never holds a running or half-written trial of the ranking, whatever kills the process."""
    from .trial import REPEAT_STREAK, propose_fresh, record_outcome

    pool = evaluate if hasattr(evaluate, "submit") else InProcess(evaluate)
    mirror = _mirror(study)
    known = {r.arch.id: r.accuracy for r in records(study) if r.is_ranked}
    waiting: dict[str, list] = {}  # design id -> its trials (a repeat proposed while it is evaluated)
    evaluated, repeats, streak, done, exhausted = 0, 0, 0, counted(study)[0], False

    def tell(trial, arch: Arch, status: Status, **fields) -> None:
        cost = count_cost(arch, deploy.image_size, deploy.num_classes)
        outcome = TrialOutcome(arch=arch, status=status, gflops=cost.gflops, mparams=cost.mparams, seed=seed,
                               backend="oneshot", fidelity=SUPERNET, **fields)
        frozen = record_outcome(mirror, trial, outcome, budget=budget)
        if status is not Status.REPEAT:
            study.add_trial(frozen)
            if advance is not None:
                advance()

    while True:
        while not exhausted and len(waiting) < pool.capacity and done + len(waiting) < n_designs:
            trial = mirror.ask()
            arch = space.sample(trial)
            cost = count_cost(arch, deploy.image_size, deploy.num_classes)
            streak += 1
            if not budget.fits(cost, arch):
                tell(trial, arch, Status.OVER_BUDGET, reason=f"{budget.excess(cost, arch)}, not evaluated")
                done, streak = done + 1, 0
            elif arch.id in known:
                tell(trial, arch, Status.REPEAT, accuracy=known[arch.id], reason=REPEAT_REASON)
                repeats += 1
            elif arch.id in waiting:
                waiting[arch.id].append(trial)  # told with the first's accuracy when it comes back
            else:
                waiting[arch.id] = [trial]
                pool.submit(arch)
                streak = 0
            if streak >= REPEAT_STREAK:
                streak = 0
                if not propose_fresh(mirror, space, seed + done):
                    if log is not None:
                        log(f"every design of space {space.name!r} the sampler finds has been ranked; stopping")
                    exhausted = True
        if not waiting:
            break
        arch, got, seconds = pool.next()
        first, *again = waiting.pop(arch.id)
        known[arch.id], evaluated, done = got.score, evaluated + 1, done + 1
        tell(first, arch, Status.COMPLETE, accuracy=got.score, epochs=0, seconds=seconds, reason=got.reason)
        for trial in again:
            tell(trial, arch, Status.REPEAT, accuracy=got.score, reason=REPEAT_REASON)
        repeats += len(again)
    if log is not None and repeats:
        log(f"{repeats} repeats of ranked designs answered to the sampler (not stored in the study)")
    return evaluated


REPEAT_REASON = "repeat: told its supernet score, not evaluated again"


def _mirror(study):
    """An in-memory copy of ``study`` (its settings and finished trials) with the study's sampler:
    where ``rank`` asks and tells."""
    import optuna

    S = optuna.trial.TrialState
    mirror = optuna.create_study(directions=study.directions, sampler=study.sampler)
    for key, value in study.user_attrs.items():
        mirror.set_user_attr(key, value)
    mirror.add_trials(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.FAIL, S.PRUNED)))
    return mirror


SCORE = "supernet accuracy x min(1, initialisation signal)"  # the ranking's objective, stored with the study


def check_score(study, name: str) -> None:
    """A study's ranking continues under the score that started it: one made before the initialisation
    check holds accuracies alone, which a continued ranking would mix with discounted ones."""
    have = study.user_attrs.get("supernet_score")
    if have is None and any(r.is_ranked for r in records(study)):
        have = "supernet accuracy"
    if have not in (None, SCORE):
        raise SearchError(f"study {name!r} ranked its designs by {have}; this se-nas ranks by {SCORE} "
                          f"(docs/oneshot.md): continuing would mix the two, start a new study with --study NAME")
    study.set_user_attr("supernet_score", SCORE)


def supernet_designs(recs):
    """The supernet-ranked designs of a study's records (one accuracy each), as ``se_nas.record.results.Design``
    values: what the confirmation picks from and a one-shot study's report shows. Never mixed with
    standalone results."""
    from ..record.results import designs_of

    return designs_of(recs, attrgetter("is_ranked"))


# --- the stages -----------------------------------------------------------------------------------
def checkpoint_path(config, epochs: int | None, sampling: str) -> Path:
    """Where the supernet's training checkpoint lives: beside the study, named by everything that
    decides the training (space, budget, recipe, epochs, sampling, seed)."""
    from ..record.storage import study_dir

    key = json.dumps({"space": config.space.to_dict(), "budget": config.budget.to_dict(),
                      "recipe": supernet_recipe(config.recipe, epochs, config.seed).to_dict(),
                      "sampling": sampling, "gate_weights": DEFAULT_GATE_WEIGHTS}, sort_keys=True)
    return study_dir(config.study, config.root) / f"supernet-{hashlib.sha1(key.encode()).hexdigest()[:10]}.pt"


def path_pool(config, net, recipe, data, todo: int):
    """Where paths are evaluated: in this process (``--backend optuna``), or on a pool of Ray actors
    (``--backend ray``, ``RayPaths``), at most one per design ``todo``."""
    if config.backend == "ray":
        from .ray_backend import connect

        connect(config.ray_address)
        return RayPaths(net, recipe, cpus_per_trial=config.cpus_per_trial, gpus_per_trial=config.gpus_per_trial,
                        most=todo)
    return InProcess(PathEvaluator(net, recipe, data))


def check_config(config) -> None:
    """Refuse a one-shot search's bad settings before anything runs: a space the supernet can't hold,
    a bad epoch count, an unknown sampling rule."""
    check_supernet_space(config.space)
    supernet_recipe(config.recipe, config.supernet_epochs, config.seed)
    if config.supernet_sampling not in SAMPLING:
        raise SearchError(f"unknown supernet sampling {config.supernet_sampling!r}; allowed: {', '.join(SAMPLING)}")


def search_stage(study, config, progress, data) -> None:
    """The one-shot strategy's search stage (``se_nas.search.stages.strategies``): train the supernet (or
    resume its checkpoint), then rank ``config.n_trials`` designs as its paths."""
    epochs, sampling = config.supernet_epochs, config.supernet_sampling
    ckpt = checkpoint_path(config, epochs, sampling)
    r = supernet_recipe(config.recipe, epochs, config.seed)
    progress.log(f"supernet: {r.epochs} epochs, {sampling} sampling, checkpoint {ckpt}")
    t0 = time.perf_counter()
    net, result, _ = train_supernet(config.space, config.recipe, data, budget=config.budget,
                                    deploy=config.deploy, epochs=epochs, sampling=sampling,
                                    seed=config.seed, checkpoint=ckpt,
                                    on_progress=lambda p: progress.live(f"supernet {p}"))
    progress.log(f"supernet trained: {result.epochs} epochs, {result.seconds:.1f}s of training "
                 f"(this run: {time.perf_counter() - t0:.1f}s)")
    check_score(study, config.study)
    todo = max(0, config.n_trials - counted(study)[0])
    progress.stage("rank", todo)
    t0, n = time.perf_counter(), 0
    if todo:
        pool = path_pool(config, net, r, data, todo)
        try:
            n = rank(study, config.space, config.budget, config.deploy, pool, config.n_trials, seed=config.seed,
                     log=progress.log, advance=progress.advance)
        finally:
            getattr(pool, "close", lambda: None)()
    progress.close()
    if n:
        progress.log(f"ranked {n} designs through the supernet in {time.perf_counter() - t0:.1f}s")
    best = sorted(supernet_designs(records(study)), key=lambda d: -d.mean)[:5]
    progress.log(f"supernet ranking ({SCORE} of each path; the summary below counts these as "
                 f"trials, never as standalone results), best {len(best)}:\n" + "\n".join(
                     f"  {d.id}  {d.mean:.4f}  {d.gflops:.3f} GFLOPs  {d.arch.label}" for d in best))
