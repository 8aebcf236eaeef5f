"""Analytic parameters and FLOPs of an ``Arch``, without building a model.

Convention (the SENet paper's and fvcore's): one multiply-accumulate is one FLOP. Convolutions and
fully connected layers count their MACs (biases are free); global pooling counts one FLOP per input
element and the SE scale one per output element. BatchNorm, ReLU, gates, additions and the stem's max
pool are not counted. With it, ResNet-50 is 3.86 GFLOPs at 224x224 and SE-ResNet-50 3.87 (Table 2).

The count reads the same ``se_nas.geometry.resolve`` result as the builder; the plain backbone's
share is cached per (design, input) so screening a candidate costs a few microseconds. fvcore's traced
count of the built model is the test oracle (``tests/test_cost.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .arch import Arch, StageSE, se_hidden
from .choices import SQUEEZE_PASSES
from .geometry import Unit, check_image_size, conv_out, resolve, stem_out


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


def conv_cost(cin: int, cout: int, k: int, out_hw: int, groups: int = 1) -> tuple[int, int]:
    """(params, FLOPs) of a bias-free conv followed by BatchNorm (2 * cout affine parameters)."""
    weights = cout * (cin // groups) * k * k
    return weights + 2 * cout, weights * out_hw


def se_cost(channels: int, hw: int, se: StageSE, bias: bool) -> tuple[int, int]:
    """(params, FLOPs) of one SE block on a ``channels`` x ``hw``-pixel map."""
    hidden = se_hidden(channels, se.reduction)
    macs = 2 * channels * hidden
    params = macs + ((hidden + channels) if bias else 0)
    passes = SQUEEZE_PASSES[se.squeeze]
    excite = macs * hw if passes == 0 else macs  # NoSqueeze: the excitation runs at every position
    return params, passes * channels * hw + excite + channels * hw


def _unit_plain(u: Unit, in_size: int, stride_on: str) -> tuple[int, int, int, int]:
    """(params, FLOPs, SE map side, output side) of a residual unit without its SE."""
    out = conv_out(in_size, 3, u.stride, 1)  # 1x1/s, 3x3/s and the shortcut agree on the size
    if u.block == "bottleneck":
        mid_in = out if stride_on == "1x1" else in_size
        parts = [
            conv_cost(u.in_ch, u.mid_ch, 1, mid_in * mid_in),
            conv_cost(u.mid_ch, u.mid_ch, 3, out * out, u.groups),
            conv_cost(u.mid_ch, u.out_ch, 1, out * out),
        ]
    else:
        parts = [conv_cost(u.in_ch, u.mid_ch, 3, out * out), conv_cost(u.mid_ch, u.out_ch, 3, out * out)]
    if u.downsample:
        parts.append(conv_cost(u.in_ch, u.out_ch, 1, out * out))
    se_side = in_size if u.slot == "input" else out
    return sum(p for p, _ in parts), sum(f for _, f in parts), se_side, out


@lru_cache(maxsize=1024)
def _plain(arch: Arch, image_size: int, num_classes: int, stem: str, width: float):
    """Cached plain costs: stem+head (params, FLOPs), per-stage plain totals, per-unit SE geometry."""
    g = resolve(arch, stem, width)
    size = stem_out(image_size, stem)
    sp, sf = conv_cost(3, g.stem_ch, 7 if stem == "imagenet" else 3, conv_out(image_size, 7, 2, 3) ** 2
                       if stem == "imagenet" else image_size * image_size)
    stage_plain = [[0, 0] for _ in arch.stages]
    se_maps = []  # (stage, channels, hw) per unit carrying SE
    for u in g.units:
        p, f, se_side, size = _unit_plain(u, size, arch.stride_on)
        stage_plain[u.stage][0] += p
        stage_plain[u.stage][1] += f
        if u.se is not None:
            se_maps.append((u.stage, u.se_channels, se_side * se_side))
    head_p = g.out_ch * num_classes + num_classes
    head_f = g.out_ch * size * size + g.out_ch * num_classes  # global pool + FC
    return sp + head_p, sf + head_f, tuple(map(tuple, stage_plain)), tuple(se_maps)


def count_cost(
    arch: Arch, image_size: int = 224, num_classes: int = 1000, stem: str = "imagenet", width: float = 1.0
) -> Cost:
    """Parameters and FLOPs of ``build_model(arch, num_classes, stem, width)`` on one image."""
    check_image_size(image_size)
    extra_p, extra_f, stage_plain, se_maps = _plain(arch, image_size, num_classes, stem, float(width))
    se = [[0, 0] for _ in arch.stages]
    for stage, channels, hw in se_maps:
        p, f = se_cost(channels, hw, arch.stages[stage], arch.se_bias)
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
    fvcore counts BatchNorm by default and does not know max pooling or the SE scale: we switch the
    former off and count the latter two like average pooling and other elementwise ops.
    """
    import torch
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
                "aten::mul": elementwise_flop_counter(0, 1),
            }
        )
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(fca.total())
    finally:
        model.train(was_training)
