"""The Squeeze-and-Excitation block (Hu et al., Sec. 3) with every variant se-nas searches.

    z = squeeze(x)                    # (N, C, 1, 1); NoSqueeze keeps (N, C, H, W)
    s = gate(W2 relu(W1 z))           # excitation, hidden width C // r
    y = x * s                         # scale: channel-wise (per position for NoSqueeze)

The excitation layers are 1x1 convolutions: on a pooled descriptor they are the paper's FC layers,
and on a full map they are exactly the NoSqueeze ablation's convolutions (Table 16).

``excitation`` and the last line of ``forward`` are the reference implementation. With a pooled
squeeze, ``fused=True`` (the default) runs the same function through ``se_nas.nn.fused``: in training,
autograd Functions that save less and make fewer passes over the feature map in backward; in
eval mode, the excitation as matrix products, and under ``torch.inference_mode`` at the standard
position the scale folded into the preceding BatchNorm (``se_nas.nn.build`` calls it). ``fused=False`` (or ``se_nas.nn.fused.set_fast_se``)
keeps the straightforward code, which is also what tracing (fvcore, export) always sees.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..design.arch import StageSE, se_hidden
from ..design.choices import GATES, SQUEEZES
from . import fused as _fused


# The implementations of the names in ``se_nas.design.choices`` (which stays free of torch).
def _avg(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, 1)


def _max(x: torch.Tensor) -> torch.Tensor:
    return F.adaptive_max_pool2d(x, 1)


def _avgmax(x: torch.Tensor) -> torch.Tensor:
    # Sum of the two descriptors, fed to one excitation (one MLP, unlike CBAM's two passes).
    return F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1)


SQUEEZE_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "avg": _avg, "max": _max, "avgmax": _avgmax, "none": None}
GATE_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid, "tanh": torch.tanh, "relu": F.relu}
if set(SQUEEZE_FNS) != set(SQUEEZES) or set(GATE_FNS) != set(GATES):  # a name added to one table only
    raise ImportError(f"se_nas.nn.se implements squeezes {sorted(SQUEEZE_FNS)} and gates {sorted(GATE_FNS)}, but "
                      f"se_nas.design.choices names {sorted(SQUEEZES)} and {sorted(GATES)}")


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, se: StageSE, bias: bool = False, hidden: int | None = None,
                 fused: bool = True):
        """``hidden``: the excitation's width when the family rounds it (``Unit.se_hidden``); by
        default the paper's ``C // r``."""
        super().__init__()
        hidden = hidden or se_hidden(channels, se.reduction)
        self.squeeze = SQUEEZE_FNS[se.squeeze]
        self.gate = GATE_FNS[se.gate]
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.choice = se
        self.fused = fused  # a plain attribute: not in the state_dict, so files stay the same

    def fast_excitation_applies(self) -> bool:
        """The excitation as matrix products on the pooled descriptor (any mode); tracers (fvcore's
        FLOP count, TorchScript and ONNX export) must see the module's convolutions."""
        return (
            self.fused
            and self.squeeze is not None
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
        )

    def fast_path_applies(self) -> bool:
        """The fused autograd Functions: they pay only in training with autograd."""
        return self.fast_excitation_applies() and self.training and torch.is_grad_enabled()

    def excitation_parameters(self) -> list[torch.Tensor]:
        return [p for p in (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias) if p is not None]

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.squeeze is None else self.squeeze(x)
        return self.gate(self.fc2(torch.relu(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path_applies():
            return _fused.se_scale(x, self)
        if self.fast_excitation_applies():  # inference: the same ops, with matrix products
            return x * _fused.excitation(self, x)
        return x * self.excitation(x)

    def extra_repr(self) -> str:
        return self.choice.label
