"""A weight-sharing SE supernet: one network holding every SE design of a search space.

Single-path one-shot NAS (Guo et al., SPOS, 2020; Cai et al., Once-for-All, 2020) trains one network
that contains every candidate, then ranks candidates by evaluating paths through it. Here the
candidates are the SE designs of a ``SearchSpace`` on a residual backbone, and every SE axis of Hu et
al. (TPAMI 2019) is a supernet choice:

* the **reduction ratio** r: each SE slot holds the excitation of the widest ratio the space allows
  (smallest r), and ratio r uses its first ``C // r`` hidden units (Once-for-All's width slicing): the
  rows of ``fc1`` and the columns of ``fc2``;
* **squeeze** is parameter-free: chosen per forward over the same weights; each **gate** has its own
  excitation in each slot (``GATE_WEIGHTS``: gates of different range read one set of weights
  differently), or, with ``gate_weights="shared"``, all gates share one;
* the **insertion point**: each slot a stage may use (``input``, ``mid``, ``residual``, ``identity``,
  ``output``) has its own excitation;
* **off** (and every slot the path does not use) is the identity.

The supernet is the builder's own ``SEResNet`` (``se_nas.nn.build``) with a ``SuperSE`` in each slot the
space may use, so its state-dict keys are the builder's (a slot's per-gate excitations are
``se_{slot}.excite.{gate}.fc1``/``fc2``). ``extract(supernet, arch)`` is exactly the ``nn.Module``
``build_model(arch, ...)`` makes, carrying the inherited weights (the prefix of the path's gate's
excitation), and computes what the supernet computes on that path. ``SuperSE`` is an
``se_nas.nn.se.SqueezeExcite`` whose 1x1 convolutions hand out the active prefix of their weights, so
the fused training kernels of ``se_nas.nn.fused`` run unchanged on the sliced weights.
"""
from __future__ import annotations

import random
from typing import Iterable

import torch
from torch import nn

from ..design.arch import Arch, ArchError, StageSE, se_hidden
from .build import ResidualUnit, SEResNet, build_model
from ..design.choices import POSITIONS
from ..design.backbones import BACKBONES
from ..design.geometry import resolve
from .se import GATE_FNS, SQUEEZE_FNS, SqueezeExcite

RESIDUAL_UNITS = ("basic", "bottleneck")  # geometry.UNITS kinds whose module is build.ResidualUnit


def residual_backbones() -> list[str]:
    """The backbones a supernet can be built on: the residual (ResNet/ResNeXt) families."""
    return [name for name, spec in BACKBONES.items() if spec.unit in RESIDUAL_UNITS]


class _Prefix(nn.Conv2d):
    """A 1x1 convolution of the widest excitation whose ``weight`` (and, for ``fc1``, ``bias``) are the
    first ``active`` hidden units along ``axis`` (0: output channels, fc1; 1: input channels, fc2).

    The full tensors stay the registered parameters (state dict, optimizer); every reader of
    ``.weight``, ``Conv2d.forward`` and ``se_nas.nn.fused`` alike, gets the slice, and gradients reach
    the full parameter through it."""

    def __init__(self, cin: int, cout: int, bias: bool, axis: int):
        super().__init__(cin, cout, 1, bias=bias)
        self.axis = axis
        self.active: int | None = None  # None: every hidden unit

    def __getattr__(self, name: str):
        value = super().__getattr__(name)
        d = self.__dict__
        if value is not None and d.get("active") is not None and (
                name == "weight" or (name == "bias" and d.get("axis") == 0)):
            return value.narrow(d["axis"], 0, d["active"])
        return value


# Which gates of a slot share one excitation's weights: a table of name -> (gate -> the weights' key).
# Gates of different range (sigmoid and hard sigmoid in (0, 1) centred near 0.5, tanh centred 0, ReLU
# unbounded) read the same pre-activation differently: weights trained for one flip or kill the stream
# under another, so by default each gate has its own (chosen on 23 designs, held on 24 fresh ones, by
# margins within the noise: docs/oneshot.md).
GATE_WEIGHTS = {
    "per-gate": lambda gate: gate,
    "per-range": lambda gate: {"hardsigmoid": "sigmoid"}.get(gate, gate),
    "shared": lambda gate: "shared",
}
DEFAULT_GATE_WEIGHTS = "per-gate"


def gate_groups(gates: Iterable[str], gate_weights: str) -> dict[str, str]:
    """gate -> the key of the excitation it uses in a slot, under the ``gate_weights`` rule."""
    if gate_weights not in GATE_WEIGHTS:
        raise ArchError(f"unknown gate weights {gate_weights!r}; allowed: {', '.join(GATE_WEIGHTS)}")
    return {g: GATE_WEIGHTS[gate_weights](g) for g in gates}


class SuperSE(SqueezeExcite):
    """Every SE design one slot may hold: ``choose(se)`` picks the reduction (a prefix of the widest
    excitation's hidden units), squeeze and gate; ``choose(None)`` makes it the identity.

    ``groups`` (gate -> key, ``gate_groups``) gives gates their own excitation when they map to
    different keys: then ``excite[key]`` holds each one's ``fc1``/``fc2`` and ``self.fc1``/``self.fc2``
    are the chosen gate's (plain attributes, not registered twice); with one key the slot has the
    builder's own ``fc1``/``fc2``."""

    def __init__(self, channels: int, reductions: Iterable[int], bias: bool = False,
                 groups: dict[str, str] | None = None):
        widest = min(reductions)
        super().__init__(channels, StageSE(reduction=widest), bias)
        self.hidden = se_hidden(channels, widest)
        self.groups = dict(groups or {})
        keys = sorted(set(self.groups.values()))
        if len(keys) <= 1:
            self.fc1 = _Prefix(channels, self.hidden, bias, axis=0)
            self.fc2 = _Prefix(self.hidden, channels, bias, axis=1)
        else:
            del self.fc1, self.fc2
            self.excite = nn.ModuleDict({k: nn.ModuleDict({"fc1": _Prefix(channels, self.hidden, bias, axis=0),
                                                           "fc2": _Prefix(self.hidden, channels, bias, axis=1)})
                                         for k in keys})
            self._use(keys[0])
        self.choose(None)

    def _use(self, key: str) -> None:
        object.__setattr__(self, "fc1", self.excite[key]["fc1"])  # not registered: the keys stay excite.*
        object.__setattr__(self, "fc2", self.excite[key]["fc2"])

    def choose(self, se: StageSE | None) -> None:
        self.choice = se
        if se is None:
            return
        hidden = se_hidden(self.fc1.in_channels, se.reduction)
        if hidden > self.hidden:
            raise ArchError(f"reduction ratio {se.reduction} needs {hidden} hidden units; this slot holds "
                            f"{self.hidden} (the widest ratio of the space)")
        if "excite" in self._modules:
            self._use(self.groups[se.gate])
        self.squeeze, self.gate = SQUEEZE_FNS[se.squeeze], GATE_FNS[se.gate]
        self.fc1.active = self.fc2.active = hidden

    def fast_excitation_applies(self) -> bool:
        return self.choice is not None and super().fast_excitation_applies()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.choice is None else super().forward(x)

    def extra_repr(self) -> str:
        return f"hidden {self.hidden}, path: " + ("off" if self.choice is None else self.choice.label)


class Supernet(SEResNet):
    """The space's backbone with a ``SuperSE`` in every slot some design of ``space`` uses.

    ``set_path(arch)`` makes it compute ``arch``; ``extract(self, arch)`` gives ``arch``'s own model."""

    def __init__(self, space, num_classes: int, stem: str = "small", width: float = 1.0,
                 zero_init_last: bool = True, gate_weights: str = DEFAULT_GATE_WEIGHTS):
        check_supernet_space(space)
        plain = space.plain()
        super().__init__(resolve(plain, stem, width), num_classes, zero_init_last)
        self.space, self.stem_name, self.width, self.num_classes = space, stem, float(width), num_classes
        self.gate_weights = gate_weights
        geom = resolve(plain, stem, width)
        units = [m for stage in self.stages for m in stage]
        if len(units) != len(geom.units) or not all(isinstance(m, ResidualUnit) for m in units):
            raise ArchError(f"the supernet supports the residual backbones ({', '.join(residual_backbones())}); "
                            f"{space.backbone!r} is built from other units")
        for m, u in zip(units, geom.units):
            st = space.stages[u.stage]
            if True not in st["enabled"]:
                continue
            for slot in sorted({POSITIONS[p] for p in st["position"]}):
                se = SuperSE(u.slot_channels(slot), st["reduction"], space.se_bias,
                             gate_groups(st["gate"], gate_weights))
                for conv in (m for m in se.modules() if isinstance(m, _Prefix)):  # the builder's initialisation
                    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                setattr(m, f"se_{slot}", se)
        self.unit_stages = tuple(u.stage for u in geom.units)
        self.path: Arch | None = None  # every slot off until a path is set

    def set_path(self, arch: Arch | None) -> "Supernet":
        """Route every SE slot for ``arch`` (None: every slot off); raises ArchError if ``arch`` is not a
        design of the space."""
        if arch is not None:
            check_path(self.space, arch)
        units = [m for stage in self.stages for m in stage]
        for m, s in zip(units, self.unit_stages):
            se = None if arch is None else arch.stages[s]
            for slot_module in (getattr(m, n) for n, _ in m.named_children() if n.startswith("se_")):
                if isinstance(slot_module, SuperSE):
                    slot_module.choose(None)
            if se is not None:
                getattr(m, f"se_{POSITIONS[se.position]}").choose(se)
        self.path = arch
        return self


def check_path(space, arch: Arch) -> None:
    """ArchError (one line) unless ``arch`` is a design of ``space``."""
    for key in ("backbone", "stride_on", "se_bias"):
        if getattr(arch, key) != getattr(space, key):
            raise ArchError(f"design {arch.id} is not in space {space.name!r}: {key} {getattr(arch, key)!r}, the "
                            f"space has {getattr(space, key)!r}")
    for i, (se, st) in enumerate(zip(arch.stages, space.stages)):
        if (se is not None) not in st["enabled"]:
            raise ArchError(f"design {arch.id} is not in space {space.name!r}: stage s{i + 1} SE "
                            f"{'on' if se is not None else 'off'}, allowed: {list(st['enabled'])}")
        if se is None:
            continue
        for axis in ("reduction", "squeeze", "gate", "position"):
            if getattr(se, axis) not in st[axis]:
                raise ArchError(f"design {arch.id} is not in space {space.name!r}: stage s{i + 1} {axis} "
                                f"{getattr(se, axis)!r}, allowed: {', '.join(map(str, st[axis]))}")
    if space.shared and len({se for se in arch.stages if se is not None}) > 1:
        raise ArchError(f"design {arch.id} is not in space {space.name!r}: the space shares one SE design "
                        f"between stages")


def extract(supernet: Supernet, arch: Arch) -> SEResNet:
    """``build_model(arch, ...)`` at the supernet's proxy settings, carrying the supernet's weights for
    ``arch``: every tensor the supernet reads on that path under the same state-dict key (each slot's
    ``fc1``/``fc2`` are the chosen gate's excitation, cut to its first ``C // r`` hidden units),
    BatchNorm statistics as the supernet holds them now. The supernet's path is left as it was."""
    check_path(supernet.space, arch)
    model = build_model(arch, supernet.num_classes, stem=supernet.stem_name, width=supernet.width)
    before = supernet.path
    supernet.set_path(arch)
    try:
        state = {}
        for key in model.state_dict():
            owner, _, name = key.rpartition(".")
            state[key] = getattr(supernet.get_submodule(owner), name).detach().clone()
    finally:
        supernet.set_path(before)
    model.load_state_dict(state)
    return model.to(next(supernet.parameters()).device)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running statistics of ``model`` (the supernet on its current path,
    or any model) as the plain average over ``batches`` of input images; nothing else changes.

    A shared BatchNorm's statistics are a mixture over the paths trained; a path's own are its
    activations' (SPOS, Sec. 3.3). Returns the number of batches read."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [bn.momentum for bn in bns]
    was_training = model.training
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
    model.train()
    n = 0
    try:
        for x in batches:
            model(x)
            n += 1
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)
    return n


# --- sampling paths --------------------------------------------------------------------------------
class _Draw:
    """A stand-in for an Optuna trial that draws every categorical choice uniformly from ``rng``: with
    ``SearchSpace.sample`` it picks each axis's value with equal probability (fair per choice)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def suggest_categorical(self, name: str, choices: list):
        return choices[self.rng.randrange(len(choices))]


def sample_path(space, rng: random.Random) -> Arch:
    """A design of ``space``, each axis's value drawn uniformly (SE on/off, then r, squeeze, gate and
    position of each stage that is on)."""
    return space.sample(_Draw(rng))


def widest_path(space, rng: random.Random) -> Arch:
    """The sandwich rule's largest path: SE in every stage that allows it, at the smallest r, the other
    axes drawn uniformly."""
    def bound(st: dict, axis: str) -> tuple:
        if axis == "enabled":
            return (True,) if True in st["enabled"] else (False,)
        return (min(st["reduction"]),) if axis == "reduction" else st[axis]
    return _restricted(space, bound, rng)


def narrowest_path(space, rng: random.Random) -> Arch:
    """The sandwich rule's smallest path: no SE where a stage allows it, else the largest r."""
    def bound(st: dict, axis: str) -> tuple:
        if axis == "enabled":
            return (False,) if False in st["enabled"] else (True,)
        return (max(st["reduction"]),) if axis == "reduction" else st[axis]
    return _restricted(space, bound, rng)


def _restricted(space, bound, rng: random.Random) -> Arch:
    from dataclasses import replace

    stages = tuple({a: bound(st, a) for a in st} for st in space.stages)
    return sample_path(replace(space, stages=stages), rng)


def check_supernet_space(space) -> None:
    """ArchError if the supernet cannot hold ``space`` (a non-residual backbone)."""
    if space.backbone not in residual_backbones():
        raise ArchError(f"the supernet supports the residual backbones ({', '.join(residual_backbones())}); "
                        f"space {space.name!r} has backbone {space.backbone!r}")

