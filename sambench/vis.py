"""Mask visualisation: instance id maps, coloured overlays and atomic PNG writes for ``vis/``."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from sambench.files import write_failure

# 20 well-separated RGB colours; instance i gets PALETTE[i % 20].
PALETTE = np.array(
    [
        [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
        [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
        [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
        [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128],
    ],
    dtype=np.float32,
)  # fmt: skip


def instance_id_map(masks: np.ndarray) -> np.ndarray:
    """N x H x W bool masks -> H x W int32: 0 background, i + 1 where mask i is (later on top)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {masks.shape}")
    ids = np.zeros(masks.shape[1:], dtype=np.int32)
    for index, mask in enumerate(masks):
        ids[mask] = index + 1
    return ids


def overlay_masks(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend one palette colour per mask into an H x W x 3 uint8 image; returns a new uint8 image.

    ``masks`` is N x H x W bool; where masks overlap the later one is shown. ``alpha`` in [0, 1]
    is the colour's weight.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be H x W x 3 uint8, got {image.shape} {image.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    ids = instance_id_map(masks)
    if ids.shape != image.shape[:2]:
        raise ValueError(f"masks are {ids.shape} (H, W) but the image is {image.shape[:2]}")
    covered = ids > 0
    blended = image.astype(np.float32)
    colours = PALETTE[(ids[covered] - 1) % len(PALETTE)]
    blended[covered] = (1.0 - alpha) * blended[covered] + alpha * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def save_png_atomic(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    """Write ``array`` (H x W or H x W x 3/4, uint8) as a PNG at ``path`` via temp file + rename;
    with ``palette`` (768 ints) an H x W uint8 array is written as an indexed (``P``) PNG.

    Parent folders are created; a reader never sees a half-written file.
    """
    path = Path(path)
    temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # umask-respecting mode
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.asarray(array))
        if palette is not None:
            if image.mode != "L":
                raise ValueError(f"a palette PNG needs an H x W uint8 array, got {np.asarray(array).shape} {np.asarray(array).dtype}")
            image = Image.frombytes("P", image.size, image.tobytes())
            image.putpalette(palette)
        image.save(temp_path, format="PNG")
        os.replace(temp_path, path)
    except OSError as exc:  # disk full, read-only folder
        temp_path.unlink(missing_ok=True)
        raise write_failure(path, np.asarray(array).nbytes, exc, kept=path.exists()) from None
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
