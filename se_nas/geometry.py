"""Derive every layer of an architecture once.

``resolve(arch, stem, width)`` turns an ``Arch`` into a layer description: the stem's convolution
and pooling, and per residual unit the sequence of its branch's convolutions, its shortcut and the
SE slot it fills. The builder (``se_nas.build``) makes modules from this description and the analytic
cost model (``se_nas.cost``) counts it, so the two cannot drift apart (compare torchvision's
``regnet.BlockParams`` and pycls's ``complexity()`` beside each module). A new kind of unit is one
entry in ``BLOCKS``: a function from widths and stride to its convolutions.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .arch import Arch, ArchError, StageSE
from .choices import BACKBONES, POSITIONS, STEMS, BackboneSpec, StemSpec, pick

STEM_CHANNELS = 64


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Conv:
    """A bias-free ``k`` x ``k`` convolution with "same" padding, followed by BatchNorm."""

    cin: int
    cout: int
    k: int
    stride: int = 1
    groups: int = 1

    @property
    def padding(self) -> int:
        return self.k // 2

    def out_size(self, size: int) -> int:
        return conv_out(size, self.k, self.stride, self.padding)


# --- units: the residual branch as a sequence of convolutions, each followed by BatchNorm and (but
# the last) ReLU. The "mid" SE slot sits before the last convolution: after the 3x3 of a bottleneck
# (Fig. 5's after-3x3 variant), after the first 3x3 of a basic unit.
def _basic(cin: int, mid: int, cout: int, stride: int, groups: int, stride_on: str) -> tuple[Conv, ...]:
    return Conv(cin, mid, 3, stride, groups), Conv(mid, cout, 3)


def _bottleneck(cin: int, mid: int, cout: int, stride: int, groups: int, stride_on: str) -> tuple[Conv, ...]:
    s1, s2 = (stride, 1) if stride_on == "1x1" else (1, stride)
    return Conv(cin, mid, 1, s1), Conv(mid, mid, 3, s2, groups), Conv(mid, cout, 1)


BLOCKS: dict[str, Callable[..., tuple[Conv, ...]]] = {"basic": _basic, "bottleneck": _bottleneck}

# Where in a unit each SE slot (choices.SLOTS) sits: 0 the unit's input, 1 the input of the branch's
# last convolution, 2 the unit's output (the residual branch's end and the shortcut's have its shape).
SLOT_POINT: dict[str, int] = {"input": 0, "mid": 1, "residual": 2, "identity": 2, "output": 2}


@dataclass(frozen=True)
class Unit:
    """One residual unit: its branch's convolutions, its shortcut, and the SE it carries (if any)."""

    stage: int
    index: int  # within its stage
    convs: tuple[Conv, ...]  # the residual branch
    shortcut: Conv | None  # projection shortcut, or None for the identity
    se: StageSE | None
    slot: str | None  # which slot of the unit the SE fills (see choices.POSITIONS)

    @property
    def in_ch(self) -> int:
        return self.convs[0].cin

    @property
    def out_ch(self) -> int:
        return self.convs[-1].cout

    @property
    def points(self) -> tuple[int, int, int]:
        """Channels at the unit's input, before its last convolution and at its output (SLOT_POINT)."""
        return self.in_ch, self.convs[-1].cin, self.out_ch

    @property
    def se_channels(self) -> int:
        """Channels the SE block sees: the unit's input for PRE, the 3x3's width for after_3x3."""
        return self.points[SLOT_POINT[self.slot or "output"]]


@dataclass(frozen=True)
class Geometry:
    arch: Arch
    stem: str
    width: float
    stem_conv: Conv
    stem_pool: tuple[int, int, int] | None  # max pool (kernel, stride, padding)
    units: tuple[Unit, ...]

    @property
    def out_ch(self) -> int:
        """Channels into the head (global average pool and the classifier)."""
        return self.units[-1].out_ch


def check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= 4):
        raise ArchError(f"width multiplier must be a number in (0, 4], got width={width!r}")
    return float(width)


@lru_cache(maxsize=4096)
def resolve(arch: Arch, stem: str = "imagenet", width: float = 1.0) -> Geometry:
    """The layers of ``arch`` at width multiplier ``width``.

    Widths are scaled by ``width`` and rounded to a multiple of 8 (of the group count for a grouped
    3x3, so that ResNeXt's cardinality survives); ``width=1`` leaves the paper's widths unchanged.
    """
    if not isinstance(stem, str) or stem not in STEMS:
        raise ArchError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    stem_spec: StemSpec = STEMS[stem]
    width = check_width(width)
    spec: BackboneSpec = BACKBONES[arch.backbone]
    block = pick(BLOCKS, spec.block, "block")
    stem_ch = make_divisible(STEM_CHANNELS * width, 8)
    units = []
    in_ch = stem_ch
    for s, (depth, mid, out) in enumerate(zip(spec.depths, spec.mid_channels, spec.out_channels)):
        mid_w = make_divisible(mid * width, max(8, spec.groups))
        out_w = make_divisible(out * width, 8)
        se = arch.stages[s]
        for i in range(depth):
            stride = 2 if (i == 0 and s > 0) else 1
            shortcut = Conv(in_ch, out_w, 1, stride) if (stride != 1 or in_ch != out_w) else None
            convs = block(in_ch, mid_w, out_w, stride, spec.groups, arch.stride_on)
            slot = None if se is None else POSITIONS[se.position]
            units.append(Unit(stage=s, index=i, convs=convs, shortcut=shortcut, se=se, slot=slot))
            in_ch = out_w
    return Geometry(arch=arch, stem=stem, width=width, stem_conv=Conv(3, stem_ch, stem_spec.kernel, stem_spec.stride),
                    stem_pool=stem_spec.pool, units=tuple(units))


def unit_input_sizes(geom: Geometry, image_size: int) -> tuple[int, ...]:
    """The spatial side of each unit's input at ``image_size`` (in ``geom.units`` order): what a
    per-unit measurement (the latency profile) feeds each unit."""
    size = geom.stem_conv.out_size(check_image_size(image_size))
    if geom.stem_pool:
        size = conv_out(size, *geom.stem_pool)
    sizes = []
    for u in geom.units:
        sizes.append(size)
        for c in u.convs:
            size = c.out_size(size)
    return tuple(sizes)


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ArchError(f"image size must be a positive integer, got image_size={image_size!r}")
    return image_size
