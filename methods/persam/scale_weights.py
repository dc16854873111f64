"""PerSAM-F: two learnable weights mixing SAM's three multimask outputs (the official ``persam_f.py``)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from sambench.losses import dice_loss


class MaskScaleWeights(nn.Module):
    """``(1 − (w1 + w2))·M1 + w1·M2 + w2·M3`` over 3 logit maps; w1 = w2 = 1/3 at start.

    The first weight is ``1 − (w1 + w2)`` as the official ``1 - weights.sum(0)`` (not
    ``(1 − w1) − w2``, which can differ by a float32 ulp), and the sum runs M1, M2, M3 in order."""

    def __init__(self):
        super().__init__()
        self.weights = nn.Parameter(torch.full((2,), 1.0 / 3.0))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """logits 3×H×W (or N×3×H×W) -> H×W (N×H×W)."""
        w1, w2 = self.weights[0], self.weights[1]
        m1, m2, m3 = logits.unbind(-3)
        return (1 - (w1 + w2)) * m1 + w1 * m2 + w2 * m3


def persam_f_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice (smooth 1) + sigmoid focal (α 0.25, γ 2, mean over pixels) of H×W logits vs a mask."""
    dice = dice_loss(logits[None], target[None])[0]
    focal = sigmoid_focal_loss(logits, target.float(), alpha=0.25, gamma=2.0, reduction="mean")
    return dice + focal


def fit_scale_weights(
    logit_maps: Callable[[], list[torch.Tensor]] | list[torch.Tensor],
    targets: list[torch.Tensor],
    *,
    iterations: int = 1000,
    lr: float = 1e-3,
    eps: float = 1e-4,
    weight_decay: float = 0.01,
) -> MaskScaleWeights:
    """Fit the two weights on the reference(s): AdamW + cosine annealing (T_max = iterations),
    one step per iteration, loss summed over references.

    ``logit_maps``: the frozen decoder's 3×H×W full-resolution logits per reference — a list
    (computed once: the sambench default) or a callable re-running the decoder every iteration
    (the official code's cost; kept for the benchmark, same result).
    """
    weights = MaskScaleWeights().to(targets[0].device)
    optimizer = torch.optim.AdamW(weights.parameters(), lr=lr, eps=eps, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    with torch.enable_grad():
        for _ in range(iterations):
            maps = logit_maps() if callable(logit_maps) else logit_maps
            loss = sum(persam_f_loss(weights(m), t) for m, t in zip(maps, targets))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return weights.eval()
