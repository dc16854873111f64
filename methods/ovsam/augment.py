"""CLIP2SAM training augmentation (large-scale jitter), on the device, as the official LSJ
pipeline (mmdet ``RandomFlip`` -> ``RandomResize`` -> ``RandomCrop`` -> ``FilterAnnotationsHB``).

Horizontal flip (p = ``flip``); a ratio r ~ U(scale_range) gives the target scale
``int(size · r)``, and the image is resized keeping its aspect ratio so that its long side fits
it (mmcv ``rescale_size``: factor = int(size · r) / long side, new side = int(side · factor + 0.5));
the float image is resized bilinearly without antialiasing (cv2 ``INTER_LINEAR`` on the float32
image, as the official ``LoadImageFromFile(to_float32=True)`` + ``Resize``) and the masks by
nearest neighbour (cv2 ``INTER_NEAREST``: source pixel floor(dst · in / out), in float64); a random
``size``² crop (offsets uniform in [0, max(side − size, 0)]); masks under ``min_mask_area``
pixels dropped. The output's sides are ≤ ``size``: it enters SAM's frame without a further
resize (normalised, zero-padded bottom/right to ``size``²).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .input_frame import rescale_size


def large_scale_jitter(image: np.ndarray, masks: torch.Tensor, *, size: int = 1024, scale_range=(0.9, 2.0),
                       flip: float = 0.5, min_mask_area: int = 32, device=None,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """image H×W×3 uint8, masks N×H×W bool -> (image 3×h×w float in [0, 255], masks K×h×w bool,
    kept instance indices K long), with h, w ≤ ``size``."""
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    x = torch.as_tensor(image, device=device).permute(2, 0, 1).float()
    m = masks.to(x.device)
    if float(torch.rand((), generator=generator)) < flip:
        x, m = x.flip(-1), m.flip(-1)
    ratio = lo + (hi - lo) * float(torch.rand((), generator=generator))
    target = int(size * ratio)
    nh, nw = rescale_size(x.shape[-2], x.shape[-1], (target, target))
    nh, nw = max(1, nh), max(1, nw)
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)[0]
    m = resize_masks_nearest(m, (nh, nw))
    top = int(torch.randint(max(nh - size, 0) + 1, (), generator=generator))
    left = int(torch.randint(max(nw - size, 0) + 1, (), generator=generator))
    x, m = x[:, top : top + size, left : left + size], m[:, top : top + size, left : left + size]
    keep = torch.nonzero(m.flatten(1).sum(1) >= min_mask_area).flatten()
    return x, m[keep], keep.cpu()


def _nearest_index(out_size: int, in_size: int, device) -> torch.Tensor:
    """cv2 ``INTER_NEAREST`` source indices: floor(dst · (1 / (out / in))) in float64, clamped."""
    step = 1.0 / (out_size / in_size)
    index = torch.floor(torch.arange(out_size, device=device, dtype=torch.float64) * step).long()
    return index.clamp(max=in_size - 1)


def resize_masks_nearest(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N×H×W bool -> N×h×w bool by cv2's nearest-neighbour rule (:func:`_nearest_index`)."""
    rows = _nearest_index(size[0], masks.shape[-2], masks.device)
    cols = _nearest_index(size[1], masks.shape[-1], masks.device)
    return masks[:, rows][:, :, cols]
