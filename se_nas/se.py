"""The Squeeze-and-Excitation block (Hu et al., Sec. 3) with every variant se-nas searches.

    z = squeeze(x)                    # (N, C, 1, 1); NoSqueeze keeps (N, C, H, W)
    s = gate(W2 relu(W1 z))           # excitation, hidden width C // r
    y = x * s                         # scale: channel-wise (per position for NoSqueeze)

The excitation layers are 1x1 convolutions: on a pooled descriptor they are the paper's FC layers,
and on a full map they are exactly the NoSqueeze ablation's convolutions (Table 16).
"""
from __future__ import annotations

import torch
from torch import nn

from .arch import StageSE, se_hidden
from .choices import GATES, SQUEEZES


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, se: StageSE, bias: bool = False):
        super().__init__()
        hidden = se_hidden(channels, se.reduction)
        self.squeeze = SQUEEZES[se.squeeze]
        self.gate = GATES[se.gate]
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias)
        self.choice = se

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        z = x if self.squeeze is None else self.squeeze(x)
        return self.gate(self.fc2(torch.relu(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(x)

    def extra_repr(self) -> str:
        return self.choice.label
