"""Mask2Former-style importance point sampling on mask logits.

Coordinates are ``N×P×2`` (x, y) in [0, 1] over the whole map; sampling is bilinear with
``grid_sample(align_corners=False)`` (so 0 and 1 are the outer pixel edges).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """x N×C×H×W, coords N×P×2 in [0, 1] -> N×C×P (bilinear, zero outside)."""
    out = F.grid_sample(x, (2.0 * coords - 1.0).unsqueeze(2).to(x.dtype), mode="bilinear", align_corners=False)
    return out.squeeze(3)


@torch.no_grad()
def uncertain_point_coords(logits: torch.Tensor, num_points: int = 12544, oversample: float = 3.0,
                           importance: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits N×1×H×W -> N×num_points×2 coordinates in [0, 1].

    ``oversample·P`` uniform random points are drawn, uncertainty = −|logit| there; the
    ``importance·P`` most uncertain are kept and the rest (``P − importance·P``) are new uniform
    random points.
    """
    if oversample < 1 or not 0 <= importance <= 1:
        raise ValueError(f"oversample must be >= 1 and importance in [0, 1] (got {oversample}, {importance})")
    n, device = logits.shape[0], logits.device
    num_sampled = int(num_points * oversample)
    num_uncertain = int(importance * num_points)
    coords = torch.rand(n, num_sampled, 2, generator=generator, device=device)
    uncertainty = -point_sample(logits.float(), coords)[:, 0].abs()  # N×S
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    picked = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    rest = torch.rand(n, num_points - num_uncertain, 2, generator=generator, device=device)
    return torch.cat([picked, rest], dim=1)
