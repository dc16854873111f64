"""CLIP2SAM losses: weighted cross-entropy on class logits and point-sampled BCE / Dice.

The loss weights (CE 2.0, BCE 5.0, Dice 5.0) are applied by the caller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sambench.losses import bce_loss, dice_loss
from .point_sampling import point_sample, uncertain_point_coords


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, class_weight: float = 1.0,
                        background_weight: float = 0.1) -> torch.Tensor:
    """logits K×(C+1), labels K (C = background) -> scalar.

    ``Σ_k w[y_k] · CE_k / Σ_k w[y_k]`` with w = class_weight for classes, background_weight for
    background (multiply by the loss weight 2.0 outside).
    """
    c1 = logits.shape[1]
    weight = logits.new_full((c1,), class_weight, dtype=torch.float32)
    weight[-1] = background_weight
    if labels.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels.long(), weight=weight, reduction="mean")


def point_mask_losses(mask_logits: torch.Tensor, gt_masks: torch.Tensor, num_points: int = 12544,
                      oversample: float = 3.0, importance: float = 0.75, eps: float = 1.0,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """mask_logits N×1×H×W, gt_masks N×H'×W' (binary) -> (bce, dice) scalars, each averaged
    over the N masks; points chosen on the logits by :func:`uncertain_point_coords`, the GT is
    sampled bilinearly at the same [0, 1] coordinates (so H' may differ from H)."""
    if mask_logits.shape[0] == 0:
        zero = mask_logits.sum() * 0.0
        return zero, zero
    coords = uncertain_point_coords(mask_logits, num_points, oversample, importance, generator)
    pred = point_sample(mask_logits, coords)[:, 0]  # N×P
    target = point_sample(gt_masks[:, None].float(), coords)[:, 0]
    return bce_loss(pred, target).mean(), dice_loss(pred, target, eps=eps).mean()
