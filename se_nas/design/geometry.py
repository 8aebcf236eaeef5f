"""Derive every layer of an architecture once.

``resolve(arch, stem, width)`` turns an ``Arch`` into a layer description: the stem, per unit its
branch of convolutions, its shortcut, how the two merge and the SE slot it fills, and the head. The
builder (``se_nas.nn.build``) makes modules from this description and the analytic cost model
(``se_nas.design.cost``) counts it, so the two cannot drift apart (compare torchvision's
``regnet.BlockParams`` and pycls's ``complexity()`` beside each module). A family is one entry in
``se_nas.design.backbones.BACKBONES``; a new kind of unit is one entry in ``UNITS``: a function from a row of
the family's table (widths already scaled) to the unit's layers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Callable

from .arch import Arch, ArchError, StageSE, se_hidden
from .choices import POSITIONS, pick
from .backbones import BACKBONES, STEMS, BackboneSpec, Block, StemLayer
from .inception import MODULE_KINDS


def make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(value / divisor + 0.5) * divisor)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's floor rule)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass(frozen=True)
class Conv:
    """A ``k`` x ``k`` convolution with "same" padding, then BatchNorm, then ``act`` (None: none),
    then a channel shuffle of ``shuffle`` groups (ShuffleNet; 0: none)."""

    cin: int
    cout: int
    k: int
    stride: int = 1
    groups: int = 1
    act: str | None = "relu"
    bias: bool = False  # VGG's convolutions keep their bias before BatchNorm
    shuffle: int = 0
    pad: int | None = None  # explicit padding (Inception-ResNet-v2's valid convolutions); None: "same"
    kw: int = 0  # a k x kw kernel, stride 1 and "same" (Inception's 1x7, 7x1); 0: square

    @property
    def padding(self) -> int:
        return self.k // 2 if self.pad is None else self.pad

    @property
    def kernel(self) -> tuple[int, int]:
        return self.k, self.kw or self.k

    @property
    def paddings(self) -> tuple[int, int]:
        return self.padding, (self.kw // 2 if self.kw else self.padding)

    def out_size(self, size: int) -> int:
        return conv_out(size, self.k, self.stride, self.padding)


@dataclass(frozen=True)
class Pool:
    """A local pooling: ``kind`` "max" or "avg", (kernel, stride, padding)."""

    kind: str
    k: int
    stride: int
    padding: int = 0

    def out_size(self, size: int) -> int:
        return conv_out(size, self.k, self.stride, self.padding)


Layer = Conv | Pool

# Where in a unit each SE slot (choices.SLOTS) sits: 0 the unit's input, 1 the input of the branch's
# last convolution, 2 the unit's output (the residual branch's end and the shortcut's have its shape).
SLOT_POINT: dict[str, int] = {"input": 0, "mid": 1, "residual": 2, "identity": 2, "output": 2}


@dataclass(frozen=True)
class Unit:
    """One unit: its branch of convolutions, its shortcut, how they merge, and the SE it carries.

    ``shortcut`` is None for a unit without one (VGG, MobileNet v1, a strided inverted residual: no
    merge), ``()`` for the identity, else its layers. ``merge`` is "add" or "concat" (the shortcut's
    channels first). ``act`` follows the merge; ``pool`` follows the whole unit (VGG's max pool).
    """

    stage: int
    index: int  # within its stage
    convs: tuple[Conv, ...]  # the branch
    shortcut: tuple[Layer, ...] | None
    se: StageSE | None
    slot: str | None  # which slot of the unit the SE fills (see choices.POSITIONS)
    merge: str = "add"
    act: str | None = "relu"
    pool: Pool | None = None
    se_divisor: int = 1

    @property
    def in_ch(self) -> int:
        return self.convs[0].cin

    @property
    def shortcut_ch(self) -> int:
        convs = [c for c in self.shortcut or () if isinstance(c, Conv)]
        return convs[-1].cout if convs else self.in_ch

    @property
    def out_ch(self) -> int:
        branch = self.convs[-1].cout
        return branch + self.shortcut_ch if self.shortcut is not None and self.merge == "concat" else branch

    def slot_channels(self, slot: str) -> int:
        """Channels the SE block in ``slot`` sees."""
        return {"input": self.in_ch, "mid": self.convs[-1].cin, "residual": self.convs[-1].cout,
                "identity": self.shortcut_ch, "output": self.out_ch}[slot]

    @property
    def se_channels(self) -> int:
        """Channels the SE block sees: the unit's input for PRE, the 3x3's width for after_3x3."""
        return self.slot_channels(self.slot or "output")

    @property
    def se_hidden(self) -> int:
        return se_hidden(self.se_channels, self.se.reduction, self.se_divisor) if self.se else 0


# --- units: a row of the family's table (widths scaled) -> (branch, shortcut, merge, act, pool)
def _projection(cin: int, cout: int, stride: int, spec: BackboneSpec) -> tuple[Layer, ...]:
    if stride == 1 and cin == cout:
        return ()
    k = spec.down_kernel if stride != 1 else 1
    return (Conv(cin, cout, k, stride, act=None),)


def _basic(cin: int, b: Block, stride: int, spec: BackboneSpec, stride_on: str):
    convs = Conv(cin, b.mid, 3, stride, b.groups), Conv(b.mid, b.out, 3, act=None)
    return convs, _projection(cin, b.out, stride, spec), "add", "relu", None


def _bottleneck(cin: int, b: Block, stride: int, spec: BackboneSpec, stride_on: str):
    s1, s2 = (stride, 1) if stride_on == "1x1" else (1, stride)
    mid2 = b.mid2 or b.mid
    convs = Conv(cin, b.mid, 1, s1), Conv(b.mid, mid2, 3, s2, b.groups), Conv(mid2, b.out, 1, act=None)
    return convs, _projection(cin, b.out, stride, spec), "add", "relu", None


def _vgg(cin: int, b: Block, stride: int, spec: BackboneSpec, stride_on: str):
    convs = tuple(Conv(cin if i == 0 else b.out, b.out, 3, bias=True) for i in range(b.layers))
    return convs, None, "add", None, Pool("max", 2, 2)


def _depthwise_separable(cin: int, b: Block, stride: int, spec: BackboneSpec, stride_on: str):
    convs = Conv(cin, cin, 3, stride, cin), Conv(cin, b.out, 1)
    return convs, None, "add", None, None


def _inverted_residual(cin: int, b: Block, stride: int, spec: BackboneSpec, stride_on: str):
    expand = (Conv(cin, b.mid, 1, act=b.act),) if b.mid != cin else ()
    convs = expand + (Conv(b.mid, b.mid, b.k, stride, b.mid, b.act), Conv(b.mid, b.out, 1, act=None))
    shortcut = () if stride == 1 and cin == b.out else None
    return convs, shortcut, "add", None, None


def _shuffle(cin: int, b: Block, stride: int, spec: BackboneSpec, stride_on: str):
    """ShuffleNet v1's unit (Zhang et al. 2018, Fig. 2): 1x1 group conv, shuffle, 3x3 depthwise (no
    ReLU), 1x1 group conv; a strided unit concatenates its branch with the 3x3 average-pooled input."""
    mid = b.out // 4  # "the number of bottleneck channels is set to 1/4 of the output channels"
    branch_out = b.out - cin if stride != 1 else b.out
    if branch_out < 1:
        raise ArchError(f"a strided ShuffleNet unit must widen its input, got {cin} -> {b.out} channels: "
                        f"the width multiplier is too small for this family")
    convs = (Conv(cin, mid, 1, groups=b.first_groups or b.groups, shuffle=b.groups if b.groups > 1 else 0),
             Conv(mid, mid, 3, stride, mid, act=None), Conv(mid, branch_out, 1, groups=b.groups, act=None))
    if stride == 1:
        return convs, (), "add", "relu", None
    return convs, (Pool("avg", 3, 2, 1),), "concat", "relu", None


UNITS: dict[str, Callable] = {
    "basic": _basic, "bottleneck": _bottleneck, "vgg": _vgg, "depthwise_separable": _depthwise_separable,
    "inverted_residual": _inverted_residual, "shuffle": _shuffle,
}


@dataclass(frozen=True)
class Geometry:
    arch: Arch
    stem: str
    width: float
    stem_layers: tuple[Layer, ...]
    units: tuple[Unit, ...]
    head_conv: Conv | None  # a 1x1 convolution before the pool (MobileNetV3)
    pool_size: int  # the head's adaptive average pool
    fc: tuple[int, ...]  # the classifier's hidden widths
    fc_act: str
    dropout: float

    @property
    def out_ch(self) -> int:
        """Channels out of the last unit."""
        return self.units[-1].out_ch

    @property
    def head_ch(self) -> int:
        """Channels into the head's pool."""
        return self.head_conv.cout if self.head_conv else self.out_ch


def check_width(width: float) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width <= 4):
        raise ArchError(f"width multiplier must be a number in (0, 4], got width={width!r}")
    return float(width)


def layer_rows(cin: int, rows: tuple[StemLayer, ...], scale: Callable[[int], int],
               small: bool = False) -> tuple[Layer, ...]:
    """Layers from rows of a table (a stem's, an Inception branch's); ``small``: every convolution a
    3x3 with stride 1, no poolings (the small stem)."""
    layers: list[Layer] = []
    for s in rows:
        if s.pool:
            if not small:
                layers.append(Pool(s.pool, s.k, s.stride, s.k // 2 if s.pad is None else s.pad))
            continue
        layers.append(Conv(cin, scale(s.out), 3, 1, act=s.act) if small else
                      Conv(cin, scale(s.out), s.k, s.stride, act=s.act, pad=s.pad, kw=s.kw))
        cin = layers[-1].cout
    return tuple(layers)


def _stem(spec: BackboneSpec, stem: str, scale: Callable[[int], int]) -> tuple[Layer, ...]:
    layers = list(layer_rows(3, spec.stem, scale, small=stem != "imagenet"))
    if spec.stem_pool and stem == "imagenet":
        layers.append(Pool("max", *spec.stem_pool))
    return tuple(layers)


@lru_cache(maxsize=4096)
def resolve(arch: Arch, stem: str = "imagenet", width: float = 1.0) -> Geometry:
    """The layers of ``arch`` at width multiplier ``width``.

    Widths are scaled by ``width`` and rounded to a multiple of the family's divisor (8; inner widths
    also of the group count, so that ResNeXt's cardinality survives); ``width=1`` leaves the paper's
    widths unchanged.
    """
    if not isinstance(stem, str) or stem not in STEMS:
        raise ArchError(f"unknown stem {stem!r}; allowed: {', '.join(STEMS)}")
    width = check_width(width)
    spec: BackboneSpec = BACKBONES[arch.backbone]

    def scale(c: int, divisor: int = spec.divisor) -> int:
        return make_divisible(c * width, divisor) if c else 0

    stem_layers = _stem(spec, stem, scale)
    in_ch = next((c.cout for c in reversed(stem_layers) if isinstance(c, Conv)), 3)
    units = []
    if spec.unit in MODULE_KINDS:  # multi-branch modules (se_nas.design.inception): one table per family
        units = list(MODULE_KINDS[spec.unit](arch, in_ch, lambda cin, rows: layer_rows(cin, rows, scale)))
        in_ch = units[-1].out_ch
    else:
        make_unit = pick(UNITS, spec.unit, "unit kind")
    for s, (rows, se) in enumerate(zip(() if units else spec.stages, arch.stages)):
        slot = None if se is None else POSITIONS[se.position]
        index = 0
        for b in rows:
            inner = max(spec.divisor, b.groups)
            b = replace(b, out=scale(b.out), mid=scale(b.mid, inner), mid2=scale(b.mid2, inner))
            for i in range(b.n):
                convs, shortcut, merge, act, pool = make_unit(in_ch, b, b.stride if i == 0 else 1, spec,
                                                              arch.stride_on)
                u = Unit(s, index, convs, shortcut, se, slot, merge, act, pool, spec.se_divisor)
                units.append(u)
                in_ch, index = u.out_ch, index + 1
    head = spec.head_conv
    head_conv = Conv(in_ch, scale(head.out), head.k, head.stride, act=head.act) if head else None
    return Geometry(arch=arch, stem=stem, width=width, stem_layers=stem_layers, units=tuple(units),
                    head_conv=head_conv, pool_size=spec.pool_size, fc=tuple(scale(f) for f in spec.fc),
                    fc_act=spec.fc_act, dropout=spec.dropout)


def unit_output_size(u: Unit, size: int) -> int:
    for c in u.convs:
        size = c.out_size(size)
    return u.pool.out_size(size) if u.pool else size


def unit_input_sizes(geom: Geometry, image_size: int) -> tuple[int, ...]:
    """The spatial side of each unit's input at ``image_size`` (in ``geom.units`` order): what a
    per-unit measurement (the latency profile) feeds each unit."""
    size = check_image_size(image_size)
    for layer in geom.stem_layers:
        size = layer.out_size(size)
    sizes = []
    for u in geom.units:
        sizes.append(size)
        size = unit_output_size(u, size)
    return tuple(sizes)


def check_image_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ArchError(f"image size must be a positive integer, got image_size={image_size!r}")
    return image_size
