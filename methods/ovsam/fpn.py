"""Feature pyramid network (lateral 1×1 convs, top-down nearest upsampling + add, 3×3 outputs).

Inputs: a list of L maps ``B×C_i×H_i×W_i`` (finest first, each level half the size of the
previous one, e.g. CLIP RN50x16 channels [384, 768, 1536, 3072] at strides 4/8/16/32).
Output: ``num_outs`` maps ``B×out_channels×H_i×W_i``; extra outputs beyond L (if asked) are
stride-2 max-pools (kernel 1) of the last output, as the standard FPN without extra convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """FPN without normalisation; convs with bias, Xavier-uniform initialised (bias 0)."""

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_outs: int = 4):
        super().__init__()
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs={num_outs} must be >= the number of input levels {len(in_channels)}")
        self.in_channels, self.out_channels, self.num_outs = list(in_channels), out_channels, num_outs
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse -> fine
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
