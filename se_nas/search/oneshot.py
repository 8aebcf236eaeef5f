"""One-shot search: train one SE supernet, rank thousands of designs through it, confirm the best
standalone.

The one-shot strategy (``se_nas.search.strategies``; ``se-nas search --strategy oneshot``, or
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
   design's initialisation check (``se_nas.nn.pathscore``: weight sharing cannot see whether a design
   trains from scratch), is the objective. Every path lands in the study as a trial of today's format with ``fidelity: "supernet"``: reports and
   the trial table show it, and ``se_nas.record.results`` never averages it with standalone trainings;
4. **confirm**: the supernet's best design within budget and the next designs of its front, r=16 and
   the plain backbone are trained standalone under the same K seeds (``se_nas.search.confirm``); the final
   front and the finding come from those runs only.

Rerunning the same command continues every stage: the supernet resumes from its checkpoint (or is
read back from it when finished), ranking continues towards ``n_trials`` designs, and confirmation
runs already stored are reused. Path evaluations run in this process, or with ``--backend ray`` on a
pool of Ray actors (``se_nas.search.pathpools``); either way only this process writes the study.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import replace
from operator import attrgetter
from pathlib import Path

import torch

from ..design.arch import Arch
from ..design.budget import Budget, Deploy
from ..design.cost import count_cost
from ..record.study import SUPERNET, SearchError, Status, TrialOutcome, counted, records
from ..nn.supernet import (DEFAULT_GATE_WEIGHTS, Supernet, check_supernet_space, narrowest_path, sample_path,
                           widest_path)
from .pathpools import InProcess, path_pool

SUPERNET_EPOCHS = 2  # supernet epochs per epoch of the recipe, by default
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


def check_config(config) -> None:
    """Refuse a one-shot search's bad settings before anything runs: a space the supernet can't hold,
    a bad epoch count, an unknown sampling rule."""
    check_supernet_space(config.space)
    supernet_recipe(config.recipe, config.supernet_epochs, config.seed)
    if config.supernet_sampling not in SAMPLING:
        raise SearchError(f"unknown supernet sampling {config.supernet_sampling!r}; allowed: {', '.join(SAMPLING)}")


def search_stage(study, config, progress, data) -> None:
    """The one-shot strategy's search stage (``se_nas.search.strategies``): train the supernet (or
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
