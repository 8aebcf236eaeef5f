"""Build an ``nn.Module`` from an ``Arch``: the paper's ResNets and ResNeXts with SE blocks.

Every residual unit has five SE slots (``input``, ``mid``, ``residual``, ``identity``, ``output``;
see ``se_nas.choices.POSITIONS``); the slot an insertion point names holds the SE block and the
others hold ``nn.Identity``. So one branch-free ``forward`` serves every insertion point of Fig. 5.
Every layer (stem, each unit's convolutions and shortcut, the SE slot) comes from the description
``se_nas.geometry.resolve`` returns, which the cost model counts.
"""
from __future__ import annotations

import torch
from torch import nn

from .arch import Arch, ArchError
from .choices import SLOTS
from .fused import bn_se_add_relu, can_fuse_tail
from .geometry import Conv, Geometry, Unit, resolve
from .se import SqueezeExcite


def _conv_bn(c: Conv) -> list[nn.Module]:
    return [nn.Conv2d(c.cin, c.cout, c.k, c.stride, c.padding, groups=c.groups, bias=False), nn.BatchNorm2d(c.cout)]


class ResidualUnit(nn.Module):
    """A residual unit as ``se_nas.geometry`` describes it (a basic unit's two 3x3 convolutions, a
    bottleneck's 1x1, 3x3, 1x1), with SE in one of its slots.

    The branch's layers are ``conv1``, ``bn1``, ``conv2``, ... (the state-dict names of model files).
    """

    def __init__(self, u: Unit, se_bias: bool):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.depth = len(u.convs)
        for i, c in enumerate(u.convs, 1):
            conv, bn = _conv_bn(c)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", bn)
        self.shortcut = nn.Sequential(*_conv_bn(u.shortcut)) if u.shortcut else nn.Identity()
        for slot in SLOTS:
            se = SqueezeExcite(u.se_channels, u.se, se_bias) if u.slot == slot else nn.Identity()
            setattr(self, f"se_{slot}", se)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return getattr(self, f"bn{self.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se_input(x)
        identity = self.se_identity(self.shortcut(x))
        out = x
        for i in range(1, self.depth):
            out = self.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out)))
        out = getattr(self, f"conv{self.depth}")(self.se_mid(out))
        last_bn = self.last_bn
        if can_fuse_tail(last_bn, self.se_residual):
            # standard SE: BatchNorm, scale, addition and ReLU in one Function (se_nas/fused.py)
            out = bn_se_add_relu(out, last_bn, self.se_residual, identity)
        else:
            out = self.relu(self.se_residual(last_bn(out)) + identity)
        return self.se_output(out)


def make_unit(u: Unit, se_bias: bool) -> nn.Module:
    """The module of one unit of a geometry, alone (what the model holds at that place)."""
    return ResidualUnit(u, se_bias)


class SEResNet(nn.Module):
    """A ResNet/ResNeXt backbone built from a resolved geometry."""

    def __init__(self, geom: Geometry, num_classes: int, zero_init_last: bool = True):
        super().__init__()
        self.arch = geom.arch
        pool = [nn.MaxPool2d(*geom.stem_pool)] if geom.stem_pool else []
        self.stem = nn.Sequential(*_conv_bn(geom.stem_conv), nn.ReLU(inplace=True), *pool)
        stages: list[list[nn.Module]] = [[] for _ in geom.arch.stages]
        for u in geom.units:
            stages[u.stage].append(make_unit(u, geom.arch.se_bias))
        self.stages = nn.Sequential(*(nn.Sequential(*s) for s in stages))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(geom.out_ch, num_classes)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:  # each unit starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, ResidualUnit):
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.forward_features(x)), 1))


def build_model(
    arch: Arch,
    num_classes: int = 1000,
    stem: str = "imagenet",
    width: float = 1.0,
    zero_init_last: bool = True,
) -> SEResNet:
    """The ``nn.Module`` for ``arch``. ``stem="small"`` and ``width<1`` give cheap proxies."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ArchError(f"number of classes must be a positive integer, got num_classes={num_classes!r}")
    return SEResNet(resolve(arch, stem, width), num_classes, zero_init_last)
