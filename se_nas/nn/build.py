"""Build an ``nn.Module`` from an ``Arch``: any backbone of the registry with SE blocks.

Every unit has five SE slots (``input``, ``mid``, ``residual``, ``identity``, ``output``;
see ``se_nas.design.choices.POSITIONS``); the slot an insertion point names holds the SE block and the
others hold ``nn.Identity``. So one branch-free ``forward`` serves every insertion point of Fig. 5.
Every layer (stem, each unit's convolutions and shortcut, the SE slot) comes from the description
``se_nas.design.geometry.resolve`` returns, which the cost model counts.
"""
from __future__ import annotations

import torch
from torch import nn

from ..design.arch import Arch, ArchError
from ..design.choices import SLOTS
from .fused import bn_se_add_relu, bn_se_inference, can_fold_bn_into_se, can_fuse_tail
from ..design.geometry import Conv, Geometry, Layer, Pool, Unit, resolve
from ..design.inception import InceptionUnit
from .se import SqueezeExcite


ACT_MODULES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "hardswish": nn.Hardswish}  # backbones.ACTS
POOL_MODULES: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def _act(name: str | None) -> nn.Module:
    return ACT_MODULES[name](inplace=True) if name else nn.Identity()


def _conv_bn(c: Conv) -> list[nn.Module]:
    return [nn.Conv2d(c.cin, c.cout, c.kernel, c.stride, c.paddings, groups=c.groups, bias=c.bias),
            nn.BatchNorm2d(c.cout)]


def _layers(layers: tuple[Layer, ...]) -> list[nn.Module]:
    """A stem or shortcut: each convolution with its BatchNorm and activation, each pooling."""
    out: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, Pool):
            out.append(POOL_MODULES[layer.kind](layer.k, layer.stride, layer.padding))
        else:
            out += _conv_bn(layer) + ([_act(layer.act)] if layer.act else [])
    return out


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: (g, C/g) channels read as (C/g, g)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ResidualUnit(nn.Module):
    """A unit as ``se_nas.design.geometry`` describes it (a residual unit, a VGG block, a depthwise-separable
    block, an inverted residual, a ShuffleNet unit), with SE in one of its slots.

    The branch's layers are ``conv1``, ``bn1``, ``conv2``, ... and the shortcut's ``shortcut`` (the
    state-dict names of model files).
    """

    def __init__(self, u: Unit, se_bias: bool):
        super().__init__()
        self.depth = len(u.convs)
        self.shuffles = tuple(c.shuffle for c in u.convs)
        for i, c in enumerate(u.convs, 1):
            conv, bn = _conv_bn(c)
            setattr(self, f"conv{i}", conv)
            setattr(self, f"bn{i}", bn)
            setattr(self, f"act{i}", _act(c.act))
        self.merge = None if u.shortcut is None else u.merge
        self.shortcut = nn.Sequential(*_layers(u.shortcut)) if u.shortcut else nn.Identity()
        self.relu = _act(u.act)  # after the merge
        for slot in SLOTS:
            se = SqueezeExcite(u.se_channels, u.se, se_bias, u.se_hidden) if u.slot == slot else nn.Identity()
            setattr(self, f"se_{slot}", se)
        self.pool = _layers((u.pool,))[0] if u.pool else nn.Identity()
        # the fused tail (se_nas/nn/fused.py) computes relu(se(bn(c)) + identity): a residual unit's end
        self.tail_fusable = self.merge == "add" and u.act == "relu" and u.convs[-1].act is None
        # in inference, an SE block straight after the last BatchNorm rides on it (fused.bn_se_inference)
        self.bn_se_foldable = u.convs[-1].act is None

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return getattr(self, f"bn{self.depth}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se_input(x)
        out = x
        for i in range(1, self.depth):
            out = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(out)))
            if self.shuffles[i - 1]:
                out = channel_shuffle(out, self.shuffles[i - 1])
        out = getattr(self, f"conv{self.depth}")(self.se_mid(out))
        last_bn = self.last_bn
        if self.merge is None:
            out = self.se_residual(getattr(self, f"act{self.depth}")(last_bn(out)))
        elif self.tail_fusable and can_fuse_tail(last_bn, self.se_residual):
            # standard SE: BatchNorm, scale, addition and ReLU in one Function (se_nas/nn/fused.py)
            out = bn_se_add_relu(out, last_bn, self.se_residual, self.se_identity(self.shortcut(x)))
        else:
            if self.bn_se_foldable and can_fold_bn_into_se(last_bn, self.se_residual):
                out = bn_se_inference(out, last_bn, self.se_residual)
            else:
                out = self.se_residual(getattr(self, f"act{self.depth}")(last_bn(out)))
            identity = self.se_identity(self.shortcut(x))
            out = self.relu(out + identity if self.merge == "add" else torch.cat((identity, out), 1))
        return self.pool(self.se_output(out))


class InceptionModule(nn.Module):
    """An Inception unit as ``se_nas.design.inception`` describes it: its branches concatenated (SE on the
    output: SENet's Fig. 2); with a residual scale, the concatenation projected back by a 1x1
    convolution, scaled and added to the input (Inception-ResNet; SE before the scaled addition).
    A Mixed module (``entry``) may open the unit."""

    def __init__(self, u: InceptionUnit, se_bias: bool):
        super().__init__()
        self.entry = nn.ModuleList(nn.Sequential(*_layers(b)) for b in u.entry) if u.entry else None
        self.branches = nn.ModuleList(nn.Sequential(*_layers(b)) for b in u.branches)
        self.proj = nn.Conv2d(u.concat_ch, u.module_in, 1) if u.residual else None
        self.scale = u.scale
        self.act = nn.ReLU(inplace=True) if u.residual and u.relu else nn.Identity()
        for slot in SLOTS:
            se = SqueezeExcite(u.slot_channels(slot), u.se, se_bias) if u.slot == slot else nn.Identity()
            setattr(self, f"se_{slot}", se)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.entry is not None:
            x = torch.cat([b(x) for b in self.entry], 1)
        x = self.se_input(x)
        out = torch.cat([b(x) for b in self.branches], 1)
        if self.proj is not None:
            out = self.act(self.se_residual(self.proj(out)) * self.scale + self.se_identity(x))
        else:
            out = self.se_residual(out)
        return self.se_output(out)


UNIT_MODULES: dict[type, type[nn.Module]] = {Unit: ResidualUnit, InceptionUnit: InceptionModule}


def make_unit(u: Unit, se_bias: bool) -> nn.Module:
    """The module of one unit of a geometry, alone (what the model holds at that place)."""
    return UNIT_MODULES[type(u)](u, se_bias)


def _classifier(geom: Geometry, num_classes: int) -> nn.Module:
    """The head's linear layers: one ``nn.Linear`` (ResNet), or hidden layers with activations and
    dropout (VGG's and MobileNetV3's classifiers, SENet-154's dropout)."""
    widths = (geom.head_ch * geom.pool_size ** 2, *geom.fc, num_classes)
    if len(widths) == 2 and not geom.dropout:
        return nn.Linear(*widths)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        if i > 0:
            layers += [_act(geom.fc_act), nn.Dropout(geom.dropout)]
        elif len(widths) == 2:
            layers.append(nn.Dropout(geom.dropout))
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class SEResNet(nn.Module):
    """A backbone of any family, built from a resolved geometry."""

    def __init__(self, geom: Geometry, num_classes: int, zero_init_last: bool = True):
        super().__init__()
        self.arch = geom.arch
        self.stem = nn.Sequential(*_layers(geom.stem_layers))
        stages: list[list[nn.Module]] = [[] for _ in geom.arch.stages]
        for u in geom.units:
            stages[u.stage].append(make_unit(u, geom.arch.se_bias))
        self.stages = nn.Sequential(*(nn.Sequential(*s) for s in stages))
        self.head_conv = nn.Sequential(*_layers((geom.head_conv,))) if geom.head_conv else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(geom.pool_size)
        self.fc = _classifier(geom, num_classes)
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:  # each residual unit starts as the identity (Goyal et al. 2017)
            for m in self.modules():
                if isinstance(m, ResidualUnit) and m.merge == "add":
                    nn.init.zeros_(m.last_bn.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.stages(self.stem(x)))

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
