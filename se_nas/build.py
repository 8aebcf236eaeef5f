"""Build an ``nn.Module`` from an ``Arch``: the paper's ResNets and ResNeXts with SE blocks.

Every residual unit has five SE slots (``input``, ``mid``, ``residual``, ``identity``, ``output``;
see ``se_nas.choices.POSITIONS``); the slot an insertion point names holds the SE block and the
others hold ``nn.Identity``. So one branch-free ``forward`` serves every insertion point of Fig. 5.
Widths, strides and slots come from ``se_nas.geometry.resolve``, which the cost model reads too.
"""
from __future__ import annotations

import torch
from torch import nn

from .arch import Arch, ArchError
from .geometry import Geometry, Unit, resolve
from .fused import bn_se_add_relu, can_fuse_tail
from .se import SqueezeExcite


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class ResidualUnit(nn.Module):
    """A basic (two 3x3) or bottleneck (1x1, 3x3, 1x1) residual unit with SE in one of its slots."""

    def __init__(self, u: Unit, stride_on: str, se_bias: bool):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        if u.block == "bottleneck":
            s1, s2 = (u.stride, 1) if stride_on == "1x1" else (1, u.stride)
            self.conv1, self.bn1 = _conv_bn(u.in_ch, u.mid_ch, 1, s1)
            self.conv2, self.bn2 = _conv_bn(u.mid_ch, u.mid_ch, 3, s2, u.groups)
            self.conv3, self.bn3 = _conv_bn(u.mid_ch, u.out_ch, 1)
        else:
            self.conv1, self.bn1 = _conv_bn(u.in_ch, u.mid_ch, 3, u.stride)
            self.conv2, self.bn2 = _conv_bn(u.mid_ch, u.out_ch, 3)
            self.conv3 = self.bn3 = None
        self.shortcut = nn.Sequential(*_conv_bn(u.in_ch, u.out_ch, 1, u.stride)) if u.downsample else nn.Identity()
        for slot in ("input", "mid", "residual", "identity", "output"):
            se = SqueezeExcite(u.se_channels, u.se, se_bias) if u.slot == slot else nn.Identity()
            setattr(self, f"se_{slot}", se)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se_input(x)
        identity = self.se_identity(self.shortcut(x))
        if self.conv3 is None:  # basic: "mid" is after the first 3x3
            out = self.se_mid(self.relu(self.bn1(self.conv1(x))))
            out, last_bn = self.conv2(out), self.bn2
        else:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.se_mid(self.relu(self.bn2(self.conv2(out))))
            out, last_bn = self.conv3(out), self.bn3
        if can_fuse_tail(last_bn, self.se_residual):
            # standard SE: BatchNorm, scale, addition and ReLU in one Function (se_nas/fused.py)
            out = bn_se_add_relu(out, last_bn, self.se_residual, identity)
        else:
            out = self.relu(self.se_residual(last_bn(out)) + identity)
        return self.se_output(out)


class SEResNet(nn.Module):
    """A ResNet/ResNeXt backbone built from a resolved geometry."""

    def __init__(self, geom: Geometry, num_classes: int, zero_init_last: bool = True):
        super().__init__()
        self.arch = geom.arch
        if geom.stem == "imagenet":
            self.stem = nn.Sequential(
                *_conv_bn(3, geom.stem_ch, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            )
        else:
            self.stem = nn.Sequential(*_conv_bn(3, geom.stem_ch, 3, 1), nn.ReLU(inplace=True))
        stages: list[list[nn.Module]] = [[] for _ in geom.arch.stages]
        for u in geom.units:
            stages[u.stage].append(ResidualUnit(u, geom.arch.stride_on, geom.arch.se_bias))
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
                    nn.init.zeros_((m.bn3 or m.bn2).weight)

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
