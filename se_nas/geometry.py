"""Derive every channel width of an architecture once.

``resolve(arch, stem, width)`` turns an ``Arch`` into per-unit widths, strides and SE slots. The
builder (``se_nas.build``) and the analytic cost model (``se_nas.cost``) both read this one result, so
they cannot drift apart (compare torchvision's ``regnet.BlockParams`` and pycls's ``anynet``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .arch import Arch, ArchError, StageSE
from .choices import BACKBONES, POSITIONS, STEMS, BackboneSpec

STEM_CHANNELS = 64


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


@dataclass(frozen=True)
class Unit:
    """One residual unit: its widths, its stride, and the SE it carries (if any)."""

    stage: int
    index: int  # within its stage
    block: str  # "basic" or "bottleneck"
    in_ch: int
    mid_ch: int
    out_ch: int
    stride: int
    groups: int
    downsample: bool  # projection shortcut (1x1 conv + BN)
    se: StageSE | None
    slot: str | None  # which slot of the unit the SE fills (see choices.POSITIONS)

    @property
    def se_channels(self) -> int:
        """Channels the SE block sees: the unit's input for PRE, the 3x3's width for after_3x3."""
        return {"input": self.in_ch, "mid": self.mid_ch}.get(self.slot or "", self.out_ch)


@dataclass(frozen=True)
class Geometry:
    arch: Arch
    stem: str
    width: float
    stem_ch: int
    units: tuple[Unit, ...]

    @property
    def out_ch(self) -> int:
        return self.units[-1].out_ch


def _validate_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= 4):
        raise ArchError(f"width multiplier must be a number in (0, 4], got width={width!r}")
    return float(width)


@lru_cache(maxsize=4096)
def resolve(arch: Arch, stem: str = "imagenet", width: float = 1.0) -> Geometry:
    """Per-unit channel widths, strides and SE slots of ``arch`` at width multiplier ``width``.

    Widths are scaled by ``width`` and rounded to a multiple of 8 (of the group count for a grouped
    3x3, so that ResNeXt's cardinality survives); ``width=1`` leaves the paper's widths unchanged.
    """
    if stem not in STEMS:
        raise ArchError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    width = _validate_width(width)
    spec: BackboneSpec = BACKBONES[arch.backbone]
    mid_div = max(8, spec.groups)
    stem_ch = make_divisible(STEM_CHANNELS * width, 8)
    units = []
    in_ch = stem_ch
    for s, (depth, mid, out) in enumerate(zip(spec.depths, spec.mid_channels, spec.out_channels)):
        mid_w = make_divisible(mid * width, mid_div) if spec.groups > 1 else make_divisible(mid * width, 8)
        out_w = make_divisible(out * width, 8)
        if spec.block == "basic":
            mid_w = out_w
        se = arch.stages[s]
        for i in range(depth):
            stride = 2 if (i == 0 and s > 0) else 1
            units.append(
                Unit(
                    stage=s,
                    index=i,
                    block=spec.block,
                    in_ch=in_ch,
                    mid_ch=mid_w,
                    out_ch=out_w,
                    stride=stride,
                    groups=spec.groups,
                    downsample=(stride != 1 or in_ch != out_w),
                    se=se,
                    slot=None if se is None else POSITIONS[se.position],
                )
            )
            in_ch = out_w
    return Geometry(arch=arch, stem=stem, width=width, stem_ch=stem_ch, units=tuple(units))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


def stem_out(size: int, stem: str) -> int:
    if stem == "imagenet":
        return conv_out(conv_out(size, 7, 2, 3), 3, 2, 1)
    return size


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ArchError(f"image size must be a positive integer, got image_size={image_size!r}")
    return image_size
