"""CLIP2SAM training augmentation (large-scale jitter), on the device.

Horizontal flip (p = ``flip``), resize so the long side is ``size · r`` with r ~ U(scale_range)
(mmdet's RandomResize of a ``size``² scale with keep_ratio), a random ``size``² crop, and masks
under ``min_mask_area`` pixels dropped. The output's sides are ≤ ``size``, so it enters SAM's
frame without a further resize (normalised and zero-padded bottom/right to ``size``²).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


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
    h, w = x.shape[-2:]
    scale = size * ratio / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)[0].clamp(0, 255)
    m = F.interpolate(m[None].float(), size=(nh, nw), mode="nearest")[0] > 0.5 if len(m) else m.new_zeros(0, nh, nw)
    top = int(torch.randint(max(nh - size, 0) + 1, (), generator=generator))
    left = int(torch.randint(max(nw - size, 0) + 1, (), generator=generator))
    x, m = x[:, top : top + size, left : left + size], m[:, top : top + size, left : left + size]
    keep = torch.nonzero(m.flatten(1).sum(1) >= min_mask_area).flatten()
    return x, m[keep], keep.cpu()
