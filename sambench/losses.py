"""Mask losses shared by methods (logits and targets of the same shape)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per mask: logits/targets N×H×W -> N (``1 - (2·Σpt + eps)/(Σp + Σt + eps)``)."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.flatten(1).float()
    inter = (probs * targets).sum(1)
    return 1.0 - (2.0 * inter + eps) / (probs.sum(1) + targets.sum(1) + eps)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy per mask: N×H×W -> N."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none").flatten(1).mean(1)
