"""The Inception families of the SENet paper's Table 2 as data: BN-Inception and Inception-ResNet-v2.

An Inception module runs parallel branches on its input and concatenates them; each branch is a
sequence of convolutions (with BatchNorm and ReLU) and poolings, written here as rows of a table
(``backbones.StemLayer``, the registry's row of a layer). A residual module (Inception-ResNet)
projects the concatenation back to its input width with a 1x1 convolution (bias, no BatchNorm, as
in TF-slim and timm), scales it and adds its input. ``MODULE_KINDS`` gives, per unit kind of the
registry (``backbones.BACKBONES[...].unit``), the modules of the family as ``InceptionUnit`` values;
``geometry.resolve`` turns the rows into layers and the builder and the cost model read those.

* **BN-Inception** (kind ``inception``; Ioffe & Szegedy 2015, Fig. 5's table, the form of Xiong's
  Caffe model that Cadene's ``pretrainedmodels.bninception`` ports). SE-BN-Inception puts SE on each
  Inception module's output (SENet, Fig. 2): "standard". A module has no residual branch (no
  shortcut, no addition) and no single 3x3, so "pre" (its input) is the only other insertion point.
* **Inception-ResNet-v2** (kind ``inception_resnet``; Szegedy et al. 2016, in the form of Google's
  TF-slim code, which timm's ``inception_resnet_v2`` ports). SE sits on the residual branch of each
  residual module, after the projection and before the scaled addition (SENet, Fig. 3 with the
  Inception branches as the residual): "standard"; "pre", "post" and "identity" exist too. The Mixed
  (reduction) modules carry no SE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .arch import Arch, StageSE
from .choices import POSITIONS
from .backbones import StemLayer


def _out_ch(branch: tuple, cin: int) -> int:
    """Channels a branch ends with: its last convolution's, or its input's (a pooling alone)."""
    return next((layer.cout for layer in reversed(branch) if hasattr(layer, "cout")), cin)


@dataclass(frozen=True)
class InceptionUnit:
    """One Inception module: ``branches`` (layers from ``geometry``) concatenated; with ``scale``, a
    residual module ``act(x + scale * proj(concat))`` (``relu`` False: Inception-ResNet-v2's last).
    ``entry``: the branches of a Mixed (reduction) module that opens the unit, concatenated before
    it; it carries no SE of its own (Inception-ResNet-v2's first unit of each stage)."""

    stage: int
    index: int  # within its stage
    in_ch: int  # the unit's input (the entry's, if any)
    branches: tuple[tuple[Any, ...], ...]
    se: StageSE | None
    slot: str | None  # which slot the SE fills (see choices.POSITIONS)
    scale: float | None = None
    relu: bool = True
    entry: tuple[tuple[Any, ...], ...] = ()
    pool = None  # no pooling after the module (geometry.unit_output_size reads it)

    @property
    def residual(self) -> bool:
        return self.scale is not None

    @property
    def module_in(self) -> int:
        """Channels into the module: the entry's concatenation, or the unit's input."""
        return sum(_out_ch(b, self.in_ch) for b in self.entry) if self.entry else self.in_ch

    @property
    def concat_ch(self) -> int:
        return sum(_out_ch(b, self.module_in) for b in self.branches)

    @property
    def out_ch(self) -> int:
        return self.module_in if self.residual else self.concat_ch

    @property
    def convs(self) -> tuple[Any, ...]:
        """The layers of one path through the unit (the entry's first branch, the module's first):
        every branch ends at the same size, so this gives the unit's output size."""
        return (self.entry[0] if self.entry else ()) + self.branches[0]

    def slot_channels(self, slot: str) -> int:
        """Channels the SE block in ``slot`` sees (its hidden width is the paper's C // r); "input"
        is the module's input, after the entry."""
        return self.module_in if slot == "input" else self.out_ch


# --- rows of the tables: a convolution (out, k[, stride, pad, kw]) or a pooling
def conv(out: int, k: int = 1, stride: int = 1, pad: int | None = None, kw: int = 0) -> StemLayer:
    return StemLayer(out, k, stride, pad=pad, kw=kw)


def pool(kind: str, k: int = 3, stride: int = 1, pad: int | None = None) -> StemLayer:
    return StemLayer(0, k, stride, pad=pad, pool=kind)


# BN-Inception (Ioffe & Szegedy 2015, Fig. 5): per module its stage, stride and #1x1, #3x3 reduce,
# #3x3, double #3x3 reduce, double #3x3, pool, pool projection (0: the pooled input passes through).
BN_INCEPTION = (
    (0, 1, 64, 64, 64, 64, 96, "avg", 32),  # 3a
    (0, 1, 64, 64, 96, 64, 96, "avg", 64),  # 3b
    (0, 2, 0, 128, 160, 64, 96, "max", 0),  # 3c
    (1, 1, 224, 64, 96, 96, 128, "avg", 128),  # 4a
    (1, 1, 192, 96, 128, 96, 128, "avg", 128),  # 4b
    (1, 1, 160, 128, 160, 128, 160, "avg", 128),  # 4c
    (1, 1, 96, 128, 192, 160, 192, "avg", 128),  # 4d
    (1, 2, 0, 128, 192, 192, 256, "max", 0),  # 4e
    (2, 1, 352, 192, 320, 160, 224, "avg", 128),  # 5a
    (2, 1, 352, 192, 320, 192, 224, "max", 128),  # 5b
)


def bn_inception_branches(row: tuple) -> tuple[tuple[StemLayer, ...], ...]:
    _, s, n1, r3, n3, rd, nd, pool_kind, proj = row
    return tuple(b for b in (
        (conv(n1),) if n1 else (),
        (conv(r3), conv(n3, 3, s)),
        (conv(rd), conv(nd, 3), conv(nd, 3, s)),
        (pool(pool_kind, 3, s),) + ((conv(proj),) if proj else ()),
    ) if b)


# Inception-ResNet-v2 in TF-slim's form (timm's module names in the comments): per module its stage,
# branches, residual scale (None: a Mixed module, no SE) and whether a ReLU follows the addition.
_V = 0  # "valid": no padding
IRV2_MIXED_5B = ((conv(96),), (conv(48), conv(64, 5)), (conv(64), conv(96, 3), conv(96, 3)),
                 (pool("avg"), conv(64)))
IRV2_BLOCK35 = ((conv(32),), (conv(32), conv(32, 3)), (conv(32), conv(48, 3), conv(64, 3)))
IRV2_MIXED_6A = ((conv(384, 3, 2, _V),), (conv(256), conv(256, 3), conv(384, 3, 2, _V)), (pool("max", 3, 2, _V),))
IRV2_BLOCK17 = ((conv(192),), (conv(128), conv(160, 1, kw=7), conv(192, 7, kw=1)))
IRV2_MIXED_7A = ((conv(256), conv(384, 3, 2, _V)), (conv(256), conv(288, 3, 2, _V)),
                 (conv(256), conv(288, 3), conv(320, 3, 2, _V)), (pool("max", 3, 2, _V),))
IRV2_BLOCK8 = ((conv(192),), (conv(192), conv(224, 1, kw=3), conv(256, 3, kw=1)))
INCEPTION_RESNET_V2 = (  # (stage, entry, branches, scale, relu, repeats): the entry opens the first
    (0, IRV2_MIXED_5B, IRV2_BLOCK35, 0.17, True, 10),  # mixed_5b, repeat
    (1, IRV2_MIXED_6A, IRV2_BLOCK17, 0.10, True, 20),  # mixed_6a, repeat_1
    (2, IRV2_MIXED_7A, IRV2_BLOCK8, 0.20, True, 9),  # mixed_7a, repeat_2
    (2, (), IRV2_BLOCK8, 1.0, False, 1),  # block8 (then the head's 1x1 to 1536, conv2d_7b)
)

Layers = Callable[[int, tuple[StemLayer, ...]], tuple[Any, ...]]  # (input width, rows) -> layers


def _modules(arch: Arch, cin: int, layers: Layers, table) -> tuple[InceptionUnit, ...]:
    """``table``: (stage, entry rows, branch rows, scale, relu, repeats) per kind of module, in order;
    the entry (if any) opens the first of the repeats."""
    units: list[InceptionUnit] = []
    for stage, entry_rows, rows, scale, relu, repeats in table:
        se = arch.stages[stage]
        slot = None if se is None else POSITIONS[se.position]
        for i in range(repeats):
            index = sum(1 for u in units if u.stage == stage)
            entry = tuple(layers(cin, b) for b in entry_rows) if i == 0 else ()
            mid = sum(_out_ch(b, cin) for b in entry) if entry else cin
            branches = tuple(layers(mid, b) for b in rows)
            units.append(InceptionUnit(stage, index, cin, branches, se, slot, scale, relu, entry))
            cin = units[-1].out_ch
    return tuple(units)


def bn_inception(arch: Arch, cin: int, layers: Layers) -> tuple[InceptionUnit, ...]:
    """BN-Inception's ten modules, one unit each."""
    table = [(row[0], (), bn_inception_branches(row), None, True, 1) for row in BN_INCEPTION]
    return _modules(arch, cin, layers, table)


def inception_resnet_v2(arch: Arch, cin: int, layers: Layers) -> tuple[InceptionUnit, ...]:
    """Inception-ResNet-v2's 40 residual modules, the first of each stage opened by its Mixed module."""
    return _modules(arch, cin, layers, INCEPTION_RESNET_V2)


MODULE_KINDS: dict[str, Callable[[Arch, int, Layers], tuple[InceptionUnit, ...]]] = {
    "inception": bn_inception,
    "inception_resnet": inception_resnet_v2,
}
