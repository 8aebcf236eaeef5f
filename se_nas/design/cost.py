"""Analytic parameters and FLOPs of an ``Arch``, without building a model.

Convention (the SENet paper's and fvcore's): one multiply-accumulate is one FLOP. Convolutions and
fully connected layers count their MACs (biases are free); global pooling counts one FLOP per input
element and the SE scale one per output element. BatchNorm, ReLU, gates, additions and the stem's max
pool are not counted. With it, ResNet-50 is 3.86 GFLOPs at 224x224 and SE-ResNet-50 3.87 (Table 2).

The count reads the same layer description (``se_nas.design.geometry.resolve``) as the builder; the plain
backbone's share is cached per (backbone form, input) so screening a candidate costs microseconds.
fvcore's traced count of the built model is the test oracle (``tests/test_cost.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .arch import Arch, ArchError, StageSE, se_hidden
from .choices import POSITIONS, SLOTS, SQUEEZE_PASSES
from .backbones import BACKBONES
from .geometry import (SLOT_POINT, Layer, Pool, check_image_size, check_width, resolve, unit_input_sizes,
                       unit_output_size)
from .inception import InceptionUnit


@dataclass(frozen=True)
class StageCost:
    stage: int
    params: int
    flops: int
    se_params: int
    se_flops: int


@dataclass(frozen=True)
class Cost:
    params: int
    flops: int
    stages: tuple[StageCost, ...]  # residual stages; stem and head are the remainder
    image_size: int
    num_classes: int

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def se_params(self) -> int:
        return sum(s.se_params for s in self.stages)

    @property
    def se_flops(self) -> int:
        return sum(s.se_flops for s in self.stages)


def conv_cost(c: Layer, out_size: int) -> tuple[int, int]:
    """(params, FLOPs) of a conv followed by BatchNorm (2 * cout affine parameters); a local pooling
    is free (fvcore counts neither max pooling nor a strided average pooling)."""
    if isinstance(c, Pool):
        return 0, 0
    weights = c.cout * (c.cin // c.groups) * c.k * (c.kw or c.k)
    return weights + (c.cout if c.bias else 0) + 2 * c.cout, weights * out_size * out_size


def se_cost(channels: int, hw: int, se: StageSE, bias: bool, divisor: int = 1) -> tuple[int, int]:
    """(params, FLOPs) of one SE block on a ``channels`` x ``hw``-pixel map."""
    hidden = se_hidden(channels, se.reduction, divisor)
    macs = 2 * channels * hidden
    params = macs + ((hidden + channels) if bias else 0)
    passes = SQUEEZE_PASSES[se.squeeze]
    excite = macs * hw if passes == 0 else macs  # NoSqueeze: the excitation runs at every position
    return params, passes * channels * hw + excite + channels * hw


def _chain(layers, size: int) -> tuple[int, int, int]:
    """(params, FLOPs, output side) of layers applied in sequence."""
    params = flops = 0
    for layer in layers:
        size = layer.out_size(size)
        p, f = conv_cost(layer, size)
        params, flops = params + p, flops + f
    return params, flops, size


def _module(u: InceptionUnit, size: int, g, image_size: int) -> tuple[int, int, int, int]:
    """(params, FLOPs, the module's input side, output side) of an Inception unit without SE: its
    entry's and its module's branches, and for a residual module the 1x1 projection (with bias) and
    the scaling, one multiply per output element."""
    entry = [_chain(b, size) for b in u.entry]
    mid_size = entry[0][2] if entry else size
    parts = entry + [_chain(b, mid_size) for b in u.branches]
    out_size = parts[-1][2]
    if out_size < 1:
        raise ArchError(f"{g.arch.backbone} with the {g.stem} stem needs image_size at least {min_image_size(g)}, "
                        f"got image_size={image_size} (stage {u.stage + 1}, unit {u.index + 1} would output nothing)")
    params, flops = sum(p for p, _, _ in parts), sum(f for _, f, _ in parts)
    if u.residual:
        params += (u.concat_ch + 1) * u.module_in
        flops += (u.concat_ch + 1) * u.module_in * out_size * out_size
    return params, flops, mid_size, out_size


def min_image_size(g) -> int:
    """The smallest input every layer of ``g`` turns into a non-empty map."""
    n = 1
    while min(unit_input_sizes(g, n) + (unit_output_size(g.units[-1], unit_input_sizes(g, n)[-1]),)) < 1:
        n += 1
    return n


@lru_cache(maxsize=256)
def _plain(backbone: str, stride_on: str, image_size: int, num_classes: int, stem: str, width: float):
    """The plain network's costs, cached per backbone form and input (the SE choices don't change
    them): stem+head (params, FLOPs), per-stage totals, and per unit where its SE slots sit as
    ``(stage, channels per slot, sides)`` with the sides at the points of ``geometry.SLOT_POINT``."""
    g = resolve(Arch.uniform(backbone, None, stride_on=stride_on), stem, width)
    extra_p, extra_f, size = _chain(g.stem_layers, image_size)
    stage_plain = [[0, 0] for _ in g.arch.stages]
    sites = []
    for u in g.units:
        if isinstance(u, InceptionUnit):
            p, f, mid_size, out_size = _module(u, size, g, image_size)
            stage_plain[u.stage][0] += p
            stage_plain[u.stage][1] += f
            sites.append((u.stage, tuple(u.slot_channels(s) for s in SLOTS), (mid_size, mid_size, out_size)))
            size = out_size
            continue
        in_size = size
        p, f, mid_size = _chain(u.convs[:-1], size)
        p2, f2, size = _chain(u.convs[-1:], mid_size)
        p3, f3, _ = _chain(u.shortcut or (), in_size)
        stage_plain[u.stage][0] += p + p2 + p3
        stage_plain[u.stage][1] += f + f2 + f3
        sites.append((u.stage, tuple(u.slot_channels(s) for s in SLOTS), (in_size, mid_size, size)))
        size = u.pool.out_size(size) if u.pool else size
    p, f, size = _chain((g.head_conv,) if g.head_conv else (), size)
    extra_p, extra_f = extra_p + p, extra_f + f + g.head_ch * size * size  # the head's average pool
    widths = (g.head_ch * g.pool_size ** 2, *g.fc, num_classes)
    for a, b in zip(widths, widths[1:]):  # the classifier's linear layers
        extra_p, extra_f = extra_p + a * b + b, extra_f + a * b
    return extra_p, extra_f, tuple(map(tuple, stage_plain)), tuple(sites)


def count_cost(
    arch: Arch, image_size: int = 224, num_classes: int = 1000, stem: str = "imagenet", width: float = 1.0
) -> Cost:
    """Parameters and FLOPs of ``build_model(arch, num_classes, stem, width)`` on one image."""
    check_image_size(image_size)
    extra_p, extra_f, stage_plain, sites = _plain(
        arch.backbone, arch.stride_on, image_size, num_classes, stem, check_width(width))
    divisor = BACKBONES[arch.backbone].se_divisor
    se = [[0, 0] for _ in arch.stages]
    for stage, channels, sides in sites:
        choice = arch.stages[stage]
        if choice is not None:
            slot = POSITIONS[choice.position]
            side = sides[SLOT_POINT[slot]]
            p, f = se_cost(channels[SLOTS.index(slot)], side * side, choice, arch.se_bias, divisor)
            se[stage][0] += p
            se[stage][1] += f
    stages = tuple(
        StageCost(i, pp + sp, pf + sf, sp, sf) for i, ((pp, pf), (sp, sf)) in enumerate(zip(stage_plain, se))
    )
    return Cost(
        params=extra_p + sum(s.params for s in stages),
        flops=extra_f + sum(s.flops for s in stages),
        stages=stages,
        image_size=image_size,
        num_classes=num_classes,
    )


def traced_flops(model, image_size: int = 224) -> int:
    """FLOPs of a built model by fvcore's tracer, set to the same convention as ``count_cost``.

    Slow (it traces the model) and used as the oracle in tests and benchmarks, never for screening.
    fvcore counts BatchNorm by default and does not know max pooling, a mean or the SE scale: we switch
    the former off and count the others like average pooling and other elementwise ops.
    """
    import warnings

    import torch

    with warnings.catch_warnings():  # fvcore scripts a helper at import time; torch calls that deprecated
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        from fvcore.nn import FlopCountAnalysis
        from fvcore.nn.jit_handles import elementwise_flop_counter

    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, image_size, image_size)
        fca = FlopCountAnalysis(model, x)
        fca.set_op_handle(
            **{
                # fvcore keeps its own handle when given None, so count BatchNorm as zero
                "aten::batch_norm": lambda inputs, outputs: 0,
                "aten::adaptive_max_pool2d": elementwise_flop_counter(1, 0),
                "aten::mean": elementwise_flop_counter(1, 0),  # a global pool written as a mean (timm)
                "aten::mul": elementwise_flop_counter(0, 1),
            }
        )
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(fca.total())
    finally:
        model.train(was_training)
