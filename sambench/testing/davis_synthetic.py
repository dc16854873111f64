"""A tiny DAVIS 2017 in the real layout: moving coloured shapes a tracker can follow.

:func:`write_davis` writes ``JPEGImages/<resolution>/<seq>/00000.jpg ...``,
``Annotations/<resolution>/<seq>/00000.png ...`` (indexed PNGs with the DAVIS palette: 0
background, k = object k, 255 void; one void patch per frame) and ``ImageSets/2017/<list>.txt``.
Each object is a flat-coloured rectangle or ellipse on a noisy grey background, moving a few
pixels per frame along its own direction. The same seed gives the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sambench.evaluation.prediction_files import davis_palette

#: Object colours (RGB), well apart from the grey background and from each other.
COLOURS = ((220, 40, 40), (40, 200, 60), (50, 80, 230), (240, 200, 30), (200, 60, 220), (30, 210, 210))
VOID = 255


def object_mask(height: int, width: int, k: int, t: int, motion: tuple) -> np.ndarray:
    """H×W bool: object k in frame t, a rectangle (odd k) or an ellipse (even k) about a fifth
    of the frame; ``motion`` = ((start y, x), (pixels per frame y, x)), bouncing off the edges."""
    (cy, cx), (vy, vx) = motion
    half_h, half_w = max(2, height // 10), max(2, width // 10)
    y = _bounce(cy + vy * t, half_h, height - 1 - half_h)
    x = _bounce(cx + vx * t, half_w, width - 1 - half_w)
    rows, cols = np.mgrid[0:height, 0:width]
    if k % 2:
        return (abs(rows - y) <= half_h) & (abs(cols - x) <= half_w)
    return ((rows - y) / half_h) ** 2 + ((cols - x) / half_w) ** 2 <= 1.0


def _bounce(position: float, low: int, high: int) -> int:
    if high <= low:
        return low
    span = high - low
    offset = (position - low) % (2 * span)
    return int(round(low + (offset if offset <= span else 2 * span - offset)))


def write_davis(
    root: Path,
    sequences: dict[str, tuple[int, int, int, int]] | None = None,
    *,
    resolution: str = "480p",
    lists: tuple[str, ...] = ("val",),
    unannotated: tuple[int, ...] = (),
    seed: int = 0,
) -> Path:
    """Write a synthetic DAVIS folder; returns ``root``.

    Args:
        sequences: {name: (T frames, H, W, number of objects)}; default two short sequences.
        resolution: the ``JPEGImages``/``Annotations`` subfolder.
        lists: sequence list files written under ``ImageSets/2017/`` (each lists every sequence).
        unannotated: frame positions written without an annotation PNG (never 0).
        seed: the shapes' start positions, velocities and the background noise.
    """
    root = Path(root)
    sequences = sequences or {"blackswan-syn": (6, 48, 64, 1), "dogs-syn": (5, 40, 56, 2)}
    rng = np.random.default_rng(seed)
    palette = davis_palette()
    for name, (frames, height, width, count) in sequences.items():
        image_dir = root / "JPEGImages" / resolution / name
        label_dir = root / "Annotations" / resolution / name
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        motions = [
            ((rng.uniform(0.25, 0.75) * height, rng.uniform(0.2, 0.8) * width),
             (rng.choice([-1, 1]) * rng.uniform(0.5, 2.0), rng.choice([-1, 1]) * rng.uniform(1.0, 3.0)))
            for _ in range(count)
        ]
        for t in range(frames):
            image = rng.normal(120, 8, size=(height, width, 3))
            labels = np.zeros((height, width), np.uint8)
            for k in range(1, count + 1):
                mask = object_mask(height, width, k, t, motions[k - 1])
                image[mask] = COLOURS[(k - 1) % len(COLOURS)]
                labels[mask] = k
            labels[-2:, :3] = VOID  # a void patch in the bottom-left corner (DAVIS marks unclear pixels 255)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(image_dir / f"{t:05d}.jpg", quality=95)
            if t == 0 or t not in unannotated:
                label_image = Image.frombytes("P", (width, height), labels.tobytes())
                label_image.putpalette(palette)
                label_image.save(label_dir / f"{t:05d}.png")
    list_dir = root / "ImageSets" / "2017"
    list_dir.mkdir(parents=True, exist_ok=True)
    for list_name in lists:
        (list_dir / f"{list_name}.txt").write_text("".join(f"{name}\n" for name in sequences), encoding="utf-8")
    return root
