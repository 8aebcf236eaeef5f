"""The backbone registry: one entry per family the SENet paper put SE into, its stem, stages, units and
head as data (rows of the family's table in its paper), plus the stems and activations a family may use.

``se_nas.design.geometry`` turns an entry into layers; the builder and the cost model both read those
layers, so adding a family is one entry here. Compare timm's ``byobnet.py`` block configs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .choices import POSITIONS


# --- backbones: one entry per family, its stages and units as data (the registry)
# A family is a stem, stages of units and a head. Each stage is a tuple of ``Block`` rows (a row of
# the family's table in its paper: n units with the same settings, the first carrying the stride);
# ``unit`` names the kind of unit in ``se_nas.design.geometry.UNITS``, which turns a row into layers. The
# builder and the cost model both read those layers, so adding a family is one entry here.
@dataclass(frozen=True)
class Block:
    out: int  # output channels of each unit
    n: int = 1  # units in this row; the first has ``stride``
    stride: int = 1
    mid: int = 0  # inner width: a bottleneck's 3x3, an inverted residual's expansion (0: none)
    mid2: int = 0  # SENet-154's 3x3 width, when it differs from its first 1x1's (0: = mid)
    k: int = 3  # kernel of the spatial convolution
    groups: int = 1  # groups of the spatial (ResNeXt) or pointwise (ShuffleNet) convolutions
    first_groups: int = 0  # ShuffleNet: groups of the first unit's first 1x1 (0: = groups)
    layers: int = 1  # VGG: convolutions in the block
    act: str = "relu"


@dataclass(frozen=True)
class StemLayer:
    out: int
    k: int
    stride: int
    act: str = "relu"
    pad: int | None = None  # explicit padding (Inception-ResNet-v2's valid convolutions); None: "same"
    kw: int = 0  # a k x kw kernel (Inception's 1x7 and 7x1); 0: square
    pool: str = ""  # "max" or "avg": a pooling row (k, stride, pad; ``out`` unused), none in small stems


@dataclass(frozen=True)
class BackboneSpec:
    unit: str  # a kind of unit in se_nas.design.geometry.UNITS
    stages: tuple[tuple[Block, ...], ...]
    stem: tuple[StemLayer, ...] = (StemLayer(64, 7, 2),)
    stem_pool: tuple[int, int, int] | None = (3, 2, 1)  # max pool (kernel, stride, padding) after the stem
    positions: tuple[str, ...] = tuple(POSITIONS)  # the insertion points this family has
    stride_forms: tuple[str, ...] = ("1x1",)  # where a strided bottleneck strides (see STRIDE_ON)
    divisor: int = 8  # widths scaled by a width multiplier are rounded to multiples of this
    se_divisor: int = 1  # SE hidden width: 1 = C // r (the paper); 8 = MobileNetV3's rounding
    down_kernel: int = 1  # kernel of a strided projection shortcut (SENet-154: 3)
    head_conv: StemLayer | None = None  # a 1x1 convolution before the pool (MobileNetV3)
    pool_size: int = 1  # the head's adaptive average pool: 1 (global) or 7 (VGG)
    fc: tuple[int, ...] = ()  # hidden widths of the classifier
    fc_act: str = "relu"
    dropout: float = 0.0  # before each linear layer of the classifier but the first hidden one
    source: str = ""

    @property
    def depths(self) -> tuple[int, ...]:
        """Units per stage."""
        return tuple(sum(b.n for b in stage) for stage in self.stages)


RESIDUAL_STRIDES = ("1x1", "3x3")


def _resnet(unit: str, depths, mids, outs, groups: int = 1, source: str = "", **kw) -> BackboneSpec:
    """He et al.'s four stages; the first unit of stages 2-4 strides by 2."""
    stages = tuple((Block(o, d, 1 if i == 0 else 2, m, groups=groups),)
                   for i, (d, m, o) in enumerate(zip(depths, mids, outs)))
    return BackboneSpec(unit, stages, stride_forms=RESIDUAL_STRIDES, source=source, **kw)


_BASIC = (64, 128, 256, 512)
_WIDE = (256, 512, 1024, 2048)
_RESNET = "He et al. 2016, Table 1"
_RESNEXT = "Xie et al. 2017, Table 1"
# Residual units have every insertion point; a family without a residual branch (VGG, MobileNet v1)
# has no shortcut to put SE on and no addition for it to precede or follow: "standard" is the end of
# the unit and "pre" its input (and, for depthwise-separable units, "after_3x3" sits between the
# depthwise and the pointwise convolution).
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": _resnet("basic", (2, 2, 2, 2), _BASIC, _BASIC, source=_RESNET),
    "resnet34": _resnet("basic", (3, 4, 6, 3), _BASIC, _BASIC, source=_RESNET),
    "resnet50": _resnet("bottleneck", (3, 4, 6, 3), _BASIC, _WIDE, source=_RESNET),
    "resnet101": _resnet("bottleneck", (3, 4, 23, 3), _BASIC, _WIDE, source=_RESNET),
    "resnet152": _resnet("bottleneck", (3, 8, 36, 3), _BASIC, _WIDE, source=_RESNET),
    "resnext50_32x4d": _resnet("bottleneck", (3, 4, 6, 3), (128, 256, 512, 1024), _WIDE, 32, _RESNEXT),
    "resnext101_32x4d": _resnet("bottleneck", (3, 4, 23, 3), (128, 256, 512, 1024), _WIDE, 32, _RESNEXT),
    "resnext101_64x4d": _resnet("bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048), _WIDE, 64,
                                "Xie et al. 2017; the 64x4d form of Lucid and torchvision"),
    # SENet-154 (Hu et al., Appendix): ResNeXt-152 64x4d with three 3x3 convolutions in the stem, the
    # first 1x1 of each bottleneck at half the 3x3's width, 3x3 stride-2 projection shortcuts, and
    # dropout 0.2 before the classifier; timm's ``senet154`` (its stride on the 3x3).
    "senet154": BackboneSpec(
        "bottleneck",
        tuple((Block(o, d, 1 if i == 0 else 2, o // 2, o, groups=64),)
              for i, (d, o) in enumerate(zip((3, 8, 36, 3), _WIDE))),
        stem=(StemLayer(64, 3, 2), StemLayer(64, 3, 1), StemLayer(128, 3, 1)),
        stride_forms=RESIDUAL_STRIDES, down_kernel=3, dropout=0.2,
        source="Hu et al. 2019, Appendix; timm senet154"),
    # VGG-16 with BatchNorm (Simonyan & Zisserman 2015, configuration D; torchvision's vgg16_bn): a
    # unit is one block of 3x3 convolutions and its max pool; SE follows the block's last ReLU.
    "vgg16_bn": BackboneSpec(
        "vgg", tuple((Block(c, layers=n),) for c, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))),
        stem=(), stem_pool=None, positions=("standard", "pre"), pool_size=7, fc=(4096, 4096), dropout=0.5,
        source="Simonyan & Zisserman 2015 (D) with BatchNorm; torchvision vgg16_bn"),
    # MobileNet v1 1.0-224 (Howard et al. 2017, Table 1): stages by resolution.
    "mobilenet_v1": BackboneSpec(
        "depthwise_separable",
        ((Block(64),), (Block(128, 1, 2), Block(128)), (Block(256, 1, 2), Block(256)),
         (Block(512, 1, 2), Block(512, 5)), (Block(1024, 1, 2), Block(1024))),
        stem=(StemLayer(32, 3, 2),), stem_pool=None, positions=("standard", "pre", "after_3x3"),
        source="Howard et al. 2017, Table 1"),
    # MobileNetV3-Large (Howard et al. 2019, Table 1; torchvision mobilenet_v3_large): stages by output
    # width, so its own SE stages (40, 112, 160 channels) are stages 3, 5 and 6.
    "mobilenet_v3_large": BackboneSpec(
        "inverted_residual",
        ((Block(16, mid=16),),
         (Block(24, 1, 2, 64), Block(24, mid=72)),
         (Block(40, 1, 2, 72, k=5), Block(40, 2, mid=120, k=5)),
         (Block(80, 1, 2, 240, act="hardswish"), Block(80, 1, mid=200, act="hardswish"),
          Block(80, 2, mid=184, act="hardswish")),
         (Block(112, mid=480, act="hardswish"), Block(112, mid=672, act="hardswish")),
         (Block(160, 1, 2, 672, k=5, act="hardswish"), Block(160, 2, mid=960, k=5, act="hardswish"))),
        stem=(StemLayer(16, 3, 2, "hardswish"),), stem_pool=None, positions=("standard", "pre", "after_3x3"),
        se_divisor=8, head_conv=StemLayer(960, 1, 1, "hardswish"), fc=(1280,), fc_act="hardswish",
        dropout=0.2, source="Howard et al. 2019, Table 1; torchvision mobilenet_v3_large"),
    # ShuffleNet v1 1x, g=3 (Zhang et al. 2018, Table 1): no group convolution on the first 1x1 of
    # stage 2, whose input has only 24 channels; widths are multiples of 12 so that g=3 divides the
    # bottleneck (a quarter of the output) and the branch of a strided unit (output minus input).
    "shufflenet_v1_g3": BackboneSpec(
        "shuffle",
        ((Block(240, 1, 2, groups=3, first_groups=1), Block(240, 3, groups=3)),
         (Block(480, 1, 2, groups=3), Block(480, 7, groups=3)),
         (Block(960, 1, 2, groups=3), Block(960, 3, groups=3))),
        stem=(StemLayer(24, 3, 2),), divisor=12, source="Zhang et al. 2018, Table 1"),
}


# --- the Inception families: their multi-branch modules are tables in se_nas.design.inception; here the
# stem, the head and how many modules each stage holds (a row per stage, n = its modules)
def _inception(unit: str, modules: tuple[int, ...], stem: tuple[StemLayer, ...], **kw) -> BackboneSpec:
    return BackboneSpec(unit, tuple((Block(0, n),) for n in modules), stem=stem, stem_pool=None, **kw)


def _max_pool(k: int, stride: int, pad: int) -> StemLayer:
    return StemLayer(0, k, stride, pad=pad, pool="max")


BACKBONES["bn_inception"] = _inception(  # modules 3a-3c | 4a-4e | 5a-5b
    "inception", (3, 5, 2),
    (StemLayer(64, 7, 2), _max_pool(3, 2, 1), StemLayer(64, 1, 1), StemLayer(192, 3, 1), _max_pool(3, 2, 1)),
    positions=("standard", "pre"), source="Ioffe & Szegedy 2015, Fig. 5")
# Inception-ResNet-v2: 10 Block35 | 20 Block17 | 10 Block8, each stage opened by a Mixed module
BACKBONES["inception_resnet_v2"] = _inception(
    "inception_resnet", (10, 20, 10),
    (StemLayer(32, 3, 2, pad=0), StemLayer(32, 3, 1, pad=0), StemLayer(64, 3, 1), _max_pool(3, 2, 0),
     StemLayer(80, 1, 1), StemLayer(192, 3, 1, pad=0), _max_pool(3, 2, 0)),
    positions=("standard", "pre", "post", "identity"), head_conv=StemLayer(1536, 1, 1),
    source="Szegedy et al. 2016, TF-slim's form (timm's inception_resnet_v2)")

# Where a strided bottleneck downsamples: "1x1" is the original ResNet and the SENet paper
# (ResNet-50 = 3.86 GFLOPs); "3x3" is torchvision's and timm's (about 4.1 GFLOPs).
STRIDE_ON = RESIDUAL_STRIDES

# --- activations after a convolution's BatchNorm (None: none)
ACTS = ("relu", "hardswish")

# --- stems: "imagenet" is the family's own (ResNet: 7x7/2 conv + 3x3/2 max pool, for 224x224
# inputs); "small" makes every stem convolution a 3x3 with stride 1 and drops the pool, for 32x32
# and smaller inputs (the CIFAR ResNets of He et al.).
STEMS: dict[str, str] = {
    "imagenet": "the family's own stem (ResNet: 7x7/2 convolution and 3x3/2 max pool)",
    "small": "the stem's convolutions as 3x3, stride 1, no pool (32x32 and smaller inputs)",
}
