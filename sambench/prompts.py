"""Prompts derived from ground-truth masks (boxes, interior points)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes N×4 (float32, x2/y2 exclusive) of boolean masks N×H×W."""
    boxes = torch.zeros(masks.shape[0], 4)
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            boxes[i] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return boxes


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
