"""The choice axes of the SE design space, one small table per axis.

Every axis of Hu et al., "Squeeze-and-Excitation Networks" (TPAMI 2019) that se-nas searches is a
table from a name to its implementation (or description). Nothing else in the package spells out the
valid names: errors, search spaces, the CLI and the docs all read these tables. Compare timm's
activation tables (``timm/layers/create_act.py``).
"""
from __future__ import annotations

from typing import Mapping

from ..errors import SeNasError


class ChoiceError(SeNasError):
    """A value that is not one of an axis's allowed names (or not in its allowed range)."""


def pick(table: Mapping[str, object], name: object, what: str) -> object:
    """``table[name]``, or a ChoiceError naming ``what``, the bad value and the allowed names."""
    if isinstance(name, str) and name in table:
        return table[name]
    raise ChoiceError(f"unknown {what} {name!r}; allowed: {', '.join(table)}")


# --- squeeze: how a (N, C, H, W) map becomes the channel descriptor z (Sec. 3.1, Table 11, Table 16)
# "none" is the paper's NoSqueeze: no pooling, the excitation runs as 1x1 convolutions at every position.
# The names and what they mean live here; their torch implementations live in ``se_nas.nn.se`` (its only
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
