"""Open-Vocabulary SAM's evaluation point prompts (the paper's ``*`` rows), as the official code
picks them (``OVSAMDataPreprocessor`` with ``use_center_point``; facts, not its code):

1. the GT mask (original size) is rescaled to the resized image's shape with mmcv's
   ``BitmapMasks.rescale`` (:func:`~methods.ovsam.input_frame.rescale_size` of the mask's size
   to that (h, w) bound, cv2 nearest neighbour);
2. it is padded by one background pixel on each side and kornia's ``distance_transform``
   (kernel 3, h = 0.35) runs on the background: a cascade of 3×3 soft-min convolutions, one
   ring of pixels per iteration (:func:`cascaded_distance_transform`);
3. the point is the first maximum in raster order, as integer (x, y) pixel indices in the
   1024 input frame (SAM's prompt encoder adds the half-pixel shift).

The cascade grows in chessboard rings with a soft tie-break, so its maximum is not the exact
Euclidean one (``method.point_rule=edt``: scipy's exact transform on the original-size mask,
scaled into the input frame as any original-pixel prompt).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .input_frame import rescale_size, resize_cv2

POINT_RULES = ("official", "edt")


def _soft_min_kernel(h: float, device, dtype) -> torch.Tensor:
    """3×3 weights exp(−‖offset‖ / h) (centre 1)."""
    offsets = torch.arange(-1, 2, device=device, dtype=dtype)
    distance = torch.hypot(offsets[:, None], offsets[None, :])
    return torch.exp(-distance / h).view(1, 1, 3, 3)


@torch.no_grad()
def cascaded_distance_transform(background: torch.Tensor, h: float = 0.35) -> torch.Tensor:
    """B×1×H×W float (1 = background, 0 = foreground) -> B×1×H×W approximate distances (0 on
    the background). Iteration i (0-based) reaches the foreground pixels next to the pixels
    reached so far, whose soft-min response r = Σ kernel × reached lies in (0, 1); each gets
    ``(3i) // 2 − h·log r`` and is marked reached; it stops when no pixel is reached (at most
    max(H, W) iterations). Borders replicate."""
    kernel = _soft_min_kernel(h, background.device, background.dtype)
    reached = background.clone()
    out = torch.zeros_like(background)
    for i in range(max(background.shape[-2:])):
        response = F.conv2d(F.pad(reached, (1, 1, 1, 1), mode="replicate"), kernel)
        new = (response > 0) & (response < 1)  # -h·log r > 0 (r = 0 gives +inf, dropped)
        if not new.any():
            break
        out = torch.where(new, (3 * i) // 2 - h * torch.log(response), out)
        reached = torch.where(new, torch.ones_like(reached), reached)
    return out


def _official_point(mask: np.ndarray) -> tuple[int, int]:
    """One mask (h×w bool, already in the input frame) -> (x, y) of the cascade's first maximum.
    Computed on the mask's bounding box plus a one-pixel margin, which gives the same values
    inside the mask as the whole frame (everything outside is background)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return 0, 0  # an empty mask: the transform is 0 everywhere, the first pixel wins
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1)
    background = torch.from_numpy(~crop).float()[None, None]
    dist = cascaded_distance_transform(background)[0, 0]
    index = int(torch.argmax(torch.round(dist * 1e4)))  # equal configurations tie exactly (no last-bit noise)
    y, x = divmod(index, dist.shape[1])
    return int(x0 + x - 1), int(y0 + y - 1)


def official_center_points(masks: torch.Tensor, input_size: tuple[int, int], keeps_aspect: bool = True) -> torch.Tensor:
    """GT masks N×H×W bool (original size) and the resized image's (h, w) -> N×1×2 float
    (x, y) integer pixel indices in the input frame (steps 1–3 of the module docstring).
    A backbone whose frame does not keep the aspect ratio (``keeps_aspect`` False: SAM 2.1's
    square resize) gets the mask resized to its frame directly."""
    points = torch.zeros(masks.shape[0], 1, 2)
    for i, mask in enumerate(masks.cpu().numpy().astype(np.uint8)):
        size = rescale_size(mask.shape[0], mask.shape[1], tuple(input_size)) if keeps_aspect else tuple(input_size)
        resized = resize_cv2(mask, size, nearest=True).astype(bool)
        points[i, 0] = torch.tensor(_official_point(resized), dtype=torch.float32)
    return points
