"""Mask classification and MaskFormer-style semantic inference (sambench design).

A mask's class probabilities: softmax over classes of ``scale · cos(f_q, E_c)`` where ``f_q`` is the
CLIP dense feature pooled under the mask (the "feature crop" classifier) and ``E_c`` the semantic
prompt embeddings. Per-pixel class scores: ``score_c = Σ_q p_q(c) · σ(m_q)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled_mask_features(mask_logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """mask_logits Q×h×w (SAM's low-res frame), features D×g×g (same frame) -> Q×D normalised."""
    weights = torch.sigmoid(F.interpolate(mask_logits[None], size=features.shape[-2:], mode="bilinear", align_corners=False)[0])
    pooled = torch.einsum("qhw,dhw->qd", weights, features) / weights.flatten(1).sum(1, keepdim=True).clamp(min=1e-6)
    return F.normalize(pooled, dim=-1)


def class_probabilities(mask_features: torch.Tensor, class_embeddings: torch.Tensor, scale: float) -> torch.Tensor:
    """Q×D and C×D -> Q×C softmax probabilities."""
    logits = scale * mask_features @ F.normalize(class_embeddings, dim=-1).T
    return logits.softmax(dim=-1)


def semantic_scores(probabilities: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Q×C and Q×h×w -> C×h×w per-pixel class scores Σ_q p_q(c) σ(m_q)."""
    return torch.einsum("qc,qhw->chw", probabilities, torch.sigmoid(mask_logits))


def semantic_loss(scores: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy on the class-normalised scores: C×h×w and h×w (int64, 255 ignored)."""
    if not (target != ignore_index).any():  # nothing labelled: no signal (nll_loss would give NaN)
        return scores.sum() * 0.0
    log_p = torch.log(scores / scores.sum(0, keepdim=True).clamp(min=1e-8) + 1e-8)
    return F.nll_loss(log_p[None], target[None], ignore_index=ignore_index)
