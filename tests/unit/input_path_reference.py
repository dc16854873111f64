"""Independent reference computations for the input-path audit tests (PIL + numpy only).

Nothing here calls sambench, segment_anything or torch: each function writes out what the
official code (``SamPredictor``: ``ResizeLongestSide.apply_image``, ``Sam.preprocess``,
``F.interpolate`` bilinear, ``Sam.postprocess_masks``) computes, so a test compares sambench with
a second implementation instead of with itself.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SAM_MEAN = np.array([123.675, 116.28, 103.53], np.float32)  # 0–255 units, RGB
SAM_STD = np.array([58.395, 57.12, 57.375], np.float32)


def sam_new_size(h: int, w: int, long_side: int = 1024) -> tuple[int, int]:
    """SAM's resized (h, w): scale = long / max(h, w), each side ``int(side · scale + 0.5)``."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def sam_canvas(image: np.ndarray, long_side: int = 1024) -> np.ndarray:
    """H×W×C uint8 -> C×1024×1024 float32: PIL bilinear resize of the uint8 image (antialiased
    when shrinking), then (x − mean) / std in 0–255 units, then zeros bottom/right."""
    nh, nw = sam_new_size(*image.shape[:2], long_side)
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)).astype(np.float32)
    canvas = np.zeros((long_side, long_side, image.shape[2]), np.float32)
    canvas[:nh, :nw] = (resized - SAM_MEAN[: image.shape[2]]) / SAM_STD[: image.shape[2]]
    return canvas.transpose(2, 0, 1)


def _linear_taps(n_in: int, n_out: int, scale_factor: float | None):
    """PyTorch's bilinear source taps (align_corners=False), in float32 as its CPU kernel:
    ratio = 1 / scale_factor or n_in / n_out, src = max(ratio (dst + 0.5) − 0.5, 0)."""
    ratio = np.float32(1.0 / scale_factor) if scale_factor else np.float32(n_in) / np.float32(n_out)
    src = np.maximum(ratio * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float64)
    return i0, i1, 1.0 - lam1, lam1


def bilinear(x: np.ndarray, size: tuple[int, int], scale_factor: float | None = None) -> np.ndarray:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` over the last two axes
    (float64 result; no antialiasing, like the official code's calls)."""
    x = np.asarray(x, np.float64)
    r0, r1, a0, a1 = _linear_taps(x.shape[-2], size[0], scale_factor)
    c0, c1, b0, b1 = _linear_taps(x.shape[-1], size[1], scale_factor)
    rows = x[..., r0, :] * a0[:, None] + x[..., r1, :] * a1[:, None]
    return rows[..., c0] * b0 + rows[..., c1] * b1


def sam_postprocess(low_res: np.ndarray, input_size: tuple[int, int], original_size: tuple[int, int]) -> np.ndarray:
    """``Sam.postprocess_masks``: …×256×256 -> bilinear 1024² -> crop to ``input_size`` ->
    bilinear to ``original_size``."""
    up = bilinear(low_res, (1024, 1024))[..., : input_size[0], : input_size[1]]
    return bilinear(up, original_size)


def scale_coords(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """``SamPredictor.predict``'s prompt frame: x · new_w / w, y · new_h / h in float64, then the
    float32 the predictor hands to the prompt encoder."""
    h, w = original_size
    nh, nw = sam_new_size(h, w)
    out = np.array(coords, np.float64).copy()
    out[..., 0] *= nw / w
    out[..., 1] *= nh / h
    return out.astype(np.float32)


def real_photo_crops(image: np.ndarray) -> list[np.ndarray]:
    """The photo, a portrait and a landscape crop of it with odd sizes (padding on both sides,
    non-integer scales)."""
    h, w = image.shape[:2]
    return [image, np.ascontiguousarray(image[:, : int(w * 0.61) | 1]), np.ascontiguousarray(image[: int(h * 0.47) | 1])]
