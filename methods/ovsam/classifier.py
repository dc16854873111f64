"""Cosine open-vocabulary classifier and the α/β geometric ensemble with frozen CLIP.

Shapes: K regions, C classes, P synonyms per class, D embedding dim. Logits are ``K×(C+1)``
with the background last (a zero prototype, so its logit is always 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_valid(low_res: torch.Tensor, layer4: torch.Tensor) -> torch.Tensor:
    """K bool: the predicted mask (logits K×1×256×256), resized bilinearly to the CLIP layer4
    grid (B×C×h×w), has a positive value (the official ensemble uses the CLIP branch only then)."""
    small = F.interpolate(low_res.float(), size=layer4.shape[-2:], mode="bilinear", align_corners=False)
    return (small > 0).flatten(1).any(dim=1)


def cosine_logits(region: torch.Tensor, text: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """region K×D, text C×P×D -> K×(C+1): ``scale · max_p cos(region, text[c, p])``, then a 0
    background logit (cosine with a zero prototype)."""
    r = F.normalize(region, dim=-1)
    t = F.normalize(text, dim=-1)
    sims = torch.einsum("kd,cpd->kcp", r, t.to(r.dtype)).amax(dim=-1) * scale
    return torch.cat([sims, sims.new_zeros(sims.shape[0], 1)], dim=1)


def geometric_ensemble(q_logits: torch.Tensor, c_logits: torch.Tensor, novel: torch.Tensor,
                       alpha: float = 0.1, beta: float = 0.9, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Fuse the OV-SAM logits ``q`` and the frozen-CLIP logits ``c`` (both K×(C+1)) -> K×C.

    Both are soft-maxed over the C+1 entries (background included); then per class
    base: ``q^(1−α) · c^α``, novel (``novel[c]`` True): ``q^(1−β) · c^β``; background dropped.
    ``valid`` (K bool, default all): rows where it is False use ``q`` alone (α = β = 0, as the
    official code does for a mask with no positive logit on the CLIP grid).
    (Scores are not renormalised: only their argmax / ranking is used.)
    """
    q = q_logits.float().softmax(dim=-1)[:, :-1]
    c = c_logits.float().softmax(dim=-1)[:, :-1]
    novel = novel.to(q.device).bool()
    w = torch.where(novel, torch.full_like(novel, beta, dtype=q.dtype), torch.full_like(novel, alpha, dtype=q.dtype))
    w = w.expand_as(q)
    if valid is not None:
        w = w * valid.to(q.device, q.dtype)[:, None]
    return q.pow(1.0 - w) * c.pow(w)


def ensemble_labels(q_logits: torch.Tensor, c_logits: torch.Tensor, novel: torch.Tensor,
                    valid: torch.Tensor | None = None, alpha: float = 0.1, beta: float = 0.9) -> torch.Tensor:
    """K long labels: argmax of :func:`geometric_ensemble` over the classes with ``valid`` True
    (bool C; default all — classes outside base ∪ novel are excluded this way)."""
    scores = geometric_ensemble(q_logits, c_logits, novel, alpha, beta)
    if valid is not None:
        valid = valid.to(scores.device).bool()
        if not valid.any():
            raise ValueError("ensemble_labels: no valid class")
        scores = scores.masked_fill(~valid, float("-inf"))
    return scores.argmax(dim=-1)
