"""Region inputs of the SAM + CLIP baselines of Open-Vocabulary SAM (Image-Crop, Feature-Crop).

- :func:`mask_crops`: the image cropped to each mask's bounding box (optionally with the pixels
  outside the mask greyed out), resized to CLIP's input size and CLIP-normalised.
- :func:`pool_in_masks`: dense CLIP features resized to the mask frame and averaged inside each
  mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sambench.backbones.clip import CLIP_MEAN, CLIP_STD
from sambench.prompts import mask_boxes


def crop_boxes(masks: torch.Tensor) -> torch.Tensor:
    """N×H×W bool -> N×4 long xyxy (x2/y2 exclusive) tight boxes; an empty mask gets the whole
    image."""
    h, w = masks.shape[-2:]
    boxes = mask_boxes(masks).long()
    empty = ~masks.flatten(1).any(dim=1)
    boxes[empty] = torch.tensor([0, 0, w, h], device=boxes.device)
    return boxes


def mask_crops(image: np.ndarray, masks: torch.Tensor, size: int, mask_background: bool = False) -> torch.Tensor:
    """H×W×3 uint8 image, N×H×W bool masks -> N×3×size×size CLIP-normalised crops.

    Each crop is the mask's bounding box (the whole image for an empty mask), stretched to
    size×size (bicubic, antialiased, clamped to [0, 1]). ``mask_background``: pixels outside the
    mask are set to CLIP's mean colour first (0 after normalisation).
    """
    device = masks.device
    pixels = torch.as_tensor(image, device=device).permute(2, 0, 1).float() / 255.0  # 3×H×W
    mean = pixels.new_tensor(CLIP_MEAN).view(3, 1, 1)
    std = pixels.new_tensor(CLIP_STD).view(3, 1, 1)
    crops = []
    for (x1, y1, x2, y2), mask in zip(crop_boxes(masks).tolist(), masks):
        crop = pixels[:, y1:y2, x1:x2]
        if mask_background:
            crop = torch.where(mask[y1:y2, x1:x2].bool(), crop, mean)
        crop = F.interpolate(crop[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
        crops.append((crop.clamp(0, 1) - mean) / std)
    return torch.stack(crops) if crops else pixels.new_zeros(0, 3, size, size)


def pool_in_masks(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Dense features D×g×g and mask weights N×m×m (same top-left frame) -> N×D.

    The features are resized bilinearly to m×m; each region embedding is the weighted mean
    ``Σ_p w_n(p) f(p) / Σ_p w_n(p)`` (a mask with zero weight sum gives 0).
    """
    resized = F.interpolate(features[None].float(), size=tuple(weights.shape[-2:]), mode="bilinear", align_corners=False)[0]
    w = weights.flatten(1).float().to(resized.device)  # N×m²
    return (w @ resized.flatten(1).T) / w.sum(dim=1, keepdim=True).clamp_min(1e-6)


def mask_weights(low_res_logits: torch.Tensor) -> torch.Tensor:
    """SAM low-res logits N×256×256 -> pooling weights: the binary mask (logits > 0); a mask with
    no positive pixel falls back to its sigmoid (soft) weights."""
    binary = (low_res_logits > 0).float()
    empty = binary.flatten(1).sum(dim=1) == 0
    return torch.where(empty[:, None, None], low_res_logits.float().sigmoid(), binary)
