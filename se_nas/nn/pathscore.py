"""Scoring a design as a path of the trained SE supernet, without training it: the one-shot search's
objective.

A path's accuracy on part of the proxy's validation split, its BatchNorm statistics recalibrated on a
few training batches (``PathEvaluator``), discounted by the design's initialisation check
(``InitCheck``: how much of the plain backbone's signal its freshly built model passes; weight sharing
cannot see whether a design trains from scratch). The result is a ``PathScore``. The ranking loop and
the evaluator pools that call this are ``se_nas.search.oneshot`` and ``se_nas.search.pathpools``.
"""
from __future__ import annotations

import copy
import statistics
from typing import NamedTuple

import torch

from ..design.arch import Arch
from ..errors import SearchError
from .supernet import recalibrate_bn

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


# --- free baselines ---------------------------------------------------------------------------------
# Zero-cost proxies (Abdelfattah et al. 2021, "Zero-Cost Proxies for Lightweight NAS"): scores of a
# freshly built model that no ranking of this package uses. They are what a ranking that costs
# training must beat (scripts/zero_cost_baselines.py, docs/oneshot.md). Both sum over the weights of
# the convolutions and linear layers, as that paper does; ``model`` is left as it was.
def _weights(model) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def grad_norm(model, x: torch.Tensor, y: torch.Tensor) -> float:
    """The sum over layers of the L2 norm of the cross-entropy loss's gradient on batch ``(x, y)``, in
    training mode (a first training step's gradient)."""
    m = copy.deepcopy(model).train()
    torch.nn.functional.cross_entropy(m(x), y).backward()
    return float(sum(w.grad.norm() for w in _weights(m) if w.grad is not None))


def synflow(model, shape: tuple[int, ...]) -> float:
    """SynFlow (Tanaka et al. 2020, "Pruning neural networks without any data"), summed over the
    layers: every parameter and buffer made positive, an all-ones input of ``shape`` (C, H, W), the
    sum of the outputs differentiated, ``sum |w * dR/dw|``; in float64 (the product over 50 layers
    overflows float32) and in eval mode (BatchNorm on its running statistics, at initialisation an
    affine map with |gamma|: the paper's data-free score without batch statistics)."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in m.state_dict().values():
            if t.is_floating_point():
                t.abs_()
    m(torch.ones((1, *shape), dtype=torch.float64)).sum().backward()
    return float(sum((w.detach() * w.grad).abs().sum() for w in _weights(m) if w.grad is not None))


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
        from .build import build_model

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
        from .train import data_batches, pick_device

        self.net = supernet
        self.device = pick_device(recipe.device if device is None else str(device))
        self.net.to(self.device)
        bs = recipe.batch_size
        seed = recipe.seed if calibration_seed is None else calibration_seed
        train = data_batches(data.train, bs, shuffle=True, seed=seed, drop_last=len(data.train) >= bs,
                             num_workers=recipe.num_workers, pin=False)
        self.calibration = [x.to(self.device) for x, _ in _first(train, batches)]
        val = data_batches(data.val, 2 * bs, shuffle=False, seed=0, drop_last=False,
                           num_workers=recipe.num_workers, pin=False)
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
        from .train import evaluate

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
