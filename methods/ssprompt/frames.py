"""Between the original image and SAM's 256² low-res mask frame (sambench design, exact geometry).

SAM's input frame: the image resized to (h_in, w_in) (longest side 1024), top-left, zero padding
bottom/right. A low-res cell (r, c) covers input-frame pixels [4r, 4r + 4) × [4c, 4c + 4), i.e.
its centre is at (4r + 2, 4c + 2); the image region is h_in / 4 × w_in / 4 cells, fractional
when h_in or w_in is not a multiple of 4 (the same geometry as ``Sam.postprocess_masks``:
upsample ×4, crop to (h_in, w_in), resize to the original size).
"""

from __future__ import annotations

import torch


def labels_to_low_res(labels: torch.Tensor, input_size: tuple[int, int], image_size: int = 1024,
                      frame: int = 256, ignore_index: int = 255) -> torch.Tensor:
    """H×W int64 labels -> frame×frame: each cell whose centre lies inside the image takes the
    label of the original pixel under that centre (nearest, centre-aligned); the other cells
    (padding) are ``ignore_index``. Integer arithmetic: row ``floor((4r + 2) · H / h_in)``."""
    (h, w), (h_in, w_in) = labels.shape, input_size
    stride = image_size // frame
    centres = stride * torch.arange(frame, device=labels.device) + stride // 2
    rows, cols = centres[centres < h_in], centres[centres < w_in]
    out = labels.new_full((frame, frame), ignore_index)
    out[: len(rows), : len(cols)] = labels[(rows * h) // h_in][:, (cols * w) // w_in]
    return out


def _linear_taps(n_out: int, n_in: int, stride: float, frame: int, device) -> tuple:
    """Bilinear taps (i0, i1, λ) at the low-res coordinates ``(i + 0.5) · n_in / (stride · n_out) − 0.5``
    of ``n_out`` output pixels, clamped to [0, frame − 1]; computed in float64."""
    src = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / (stride * n_out)) - 0.5)
    src = src.clamp(0, frame - 1)
    i0 = src.floor().long()
    return i0, (i0 + 1).clamp(max=frame - 1), src - i0


def low_res_to_image(maps: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                     image_size: int = 1024) -> torch.Tensor:
    """C×frame×frame maps -> C×H×W, bilinear at each original pixel centre, whose low-res
    coordinate is ``(i + 0.5) · h_in / (4 H) − 0.5`` (clamped to the frame, as ``F.interpolate``):
    one resize from the padded frame, in SAM's geometry."""
    frame = maps.shape[-1]
    stride = image_size / frame
    r0, r1, a = _linear_taps(original_size[0], input_size[0], stride, frame, maps.device)
    c0, c1, b = _linear_taps(original_size[1], input_size[1], stride, frame, maps.device)
    rows = maps[:, r0].lerp_(maps[:, r1], a.to(maps.dtype)[:, None])  # C×H×frame
    return rows[:, :, c0].lerp_(rows[:, :, c1], b.to(maps.dtype))  # in place: two C×H×W buffers at most
