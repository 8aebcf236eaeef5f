"""The choice axes of the SE design space, one small table per axis.

Every axis of Hu et al., "Squeeze-and-Excitation Networks" (TPAMI 2019) that se-nas searches is a
table from a name to its implementation (or description). Nothing else in the package spells out the
valid names: errors, search spaces, the CLI and the docs all read these tables. Compare timm's
activation tables (``timm/layers/create_act.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


class ChoiceError(ValueError):
    """A value that is not one of an axis's allowed names (or not in its allowed range)."""


def pick(table: Mapping[str, object], name: object, what: str) -> object:
    """``table[name]``, or a ChoiceError naming ``what``, the bad value and the allowed names."""
    if isinstance(name, str) and name in table:
        return table[name]
    raise ChoiceError(f"unknown {what} {name!r}; allowed: {', '.join(table)}")


# --- squeeze: how a (N, C, H, W) map becomes the channel descriptor z (Sec. 3.1, Table 11, Table 16)
# "none" is the paper's NoSqueeze: no pooling, the excitation runs as 1x1 convolutions at every position.
# The names and what they mean live here; their torch implementations live in ``se_nas.se`` (its only
# user), so the analytic cost model, the CLI's ``cost`` and the search space never import torch.
SQUEEZES: dict[str, str] = {
    "avg": "global average pooling",
    "max": "global max pooling",
    "avgmax": "sum of the average and max descriptors, one excitation (unlike CBAM's two passes)",
    "none": "NoSqueeze: no pooling, the excitation as 1x1 convolutions at every position",
}
# How many passes over the feature map the squeeze reads (its FLOPs are passes * C * H * W).
SQUEEZE_PASSES: dict[str, int] = {"avg": 1, "max": 1, "avgmax": 2, "none": 0}

# --- gate: the excitation's final nonlinearity (Table 12)
GATES: dict[str, str] = {
    "sigmoid": "sigmoid (the paper's)",
    "hardsigmoid": "hard sigmoid, relu6(x + 3) / 6 (MobileNetV3)",
    "tanh": "tanh",
    "relu": "ReLU",
}

# --- insertion point in a residual unit (Fig. 5, Tables 14 and 15), as the slot of the unit it fills.
# Slots: "input" (before the unit: both branches see the recalibrated input), "mid" (after the 3x3
# convolution, its BN and ReLU), "residual" (end of the residual branch, before the addition),
# "identity" (on the shortcut), "output" (after the addition and its ReLU).
POSITIONS: dict[str, str] = {
    "standard": "residual",
    "pre": "input",
    "post": "output",
    "identity": "identity",
    "after_3x3": "mid",
}
SLOTS = ("input", "mid", "residual", "identity", "output")

# Short spellings for the display label (never parsed back).
ABBREV = {
    "avg": "avg", "max": "max", "avgmax": "amx", "none": "nosq",
    "sigmoid": "sig", "hardsigmoid": "hsig", "tanh": "tanh", "relu": "relu",
    "standard": "std", "pre": "pre", "post": "post", "identity": "id", "after_3x3": "3x3",
}


# --- backbones (He et al. 2016; Xie et al. 2017), in the form the SENet paper trains
@dataclass(frozen=True)
class BackboneSpec:
    block: str  # "basic" or "bottleneck"
    depths: tuple[int, ...]  # residual units per stage
    mid_channels: tuple[int, ...]  # width of the 3x3 convolution(s) per stage
    out_channels: tuple[int, ...]  # output width per stage
    groups: int = 1  # groups of the 3x3 convolution (ResNeXt cardinality)


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("basic", (2, 2, 2, 2), (64, 128, 256, 512), (64, 128, 256, 512)),
    "resnet34": BackboneSpec("basic", (3, 4, 6, 3), (64, 128, 256, 512), (64, 128, 256, 512)),
    "resnet50": BackboneSpec("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), (256, 512, 1024, 2048)),
    "resnet101": BackboneSpec("bottleneck", (3, 4, 23, 3), (64, 128, 256, 512), (256, 512, 1024, 2048)),
    "resnet152": BackboneSpec("bottleneck", (3, 8, 36, 3), (64, 128, 256, 512), (256, 512, 1024, 2048)),
    "resnext50_32x4d": BackboneSpec(
        "bottleneck", (3, 4, 6, 3), (128, 256, 512, 1024), (256, 512, 1024, 2048), groups=32
    ),
}

# Where a strided bottleneck downsamples: "1x1" is the original ResNet and the SENet paper
# (ResNet-50 = 3.86 GFLOPs); "3x3" is torchvision's and timm's (about 4.1 GFLOPs).
STRIDE_ON = ("1x1", "3x3")



# --- stems: the layers before the first stage
@dataclass(frozen=True)
class StemSpec:
    kernel: int  # one kernel x kernel convolution (with BatchNorm and ReLU) ...
    stride: int
    pool: tuple[int, int, int] | None = None  # ... then a max pool (kernel, stride, padding), if any


# "imagenet" is 7x7/2 conv + 3x3/2 max pool (224x224 inputs); "small" is one 3x3/1 conv and no
# pooling, for 32x32 and smaller inputs (the CIFAR ResNets of He et al.).
STEMS: dict[str, StemSpec] = {
    "imagenet": StemSpec(7, 2, (3, 2, 1)),
    "small": StemSpec(3, 1),
}
