"""Prompts derived from ground-truth masks (boxes, interior points)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes N×4 (float32, x2/y2 exclusive, on the masks' device) of boolean masks
    N×H×W; an empty mask gets (0, 0, 0, 0)."""
    masks = masks.bool()
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros(0, 4, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # N×H, N×W
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ys, h).amin(dim=1)
    y2 = torch.where(rows, ys, -1).amax(dim=1) + 1
    x1 = torch.where(cols, xs, w).amin(dim=1)
    x2 = torch.where(cols, xs, -1).amax(dim=1) + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(rows.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def interior_points(masks: torch.Tensor) -> torch.Tensor:
    """The pixel farthest from each mask's boundary (distance transform), as N×1×2 integer
    (x, y) pixel coordinates (SAM's prompt encoder adds the half-pixel shift itself); the
    first such pixel in raster order on ties."""
    points = torch.zeros(masks.shape[0], 1, 2)
    for i, mask in enumerate(masks.cpu().numpy()):
        if mask.any():
            dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
            points[i, 0] = torch.tensor([float(x), float(y)])
    return points
