"""The embedded default dataset: synthetic shapes on smooth backgrounds, no files needed.

Every image is generated on demand from ``(seed, split, index)``, so the same arguments always
give identical samples and the train and eval splits never share an image.
"""

from __future__ import annotations

import numpy as np
import torch

from sambench import tasks
from sambench.data.base import SambenchDataset
from sambench.errors import ConfigError
from sambench.registry import DATASETS
from sambench.structures import Sample

CLASS_NAMES = ["ellipse", "rectangle", "triangle"]
SPLIT_CODES = {"train": 0, "eval": 1}
MIN_VISIBLE_PIXELS = 30
MIN_SIDE = 32
MAX_ATTEMPTS = 20


def smooth_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """H×W×3 float: low-frequency colour waves plus mild noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ys, xs = ys / height, xs / width
    channels = []
    for _ in range(3):
        fy, fx = rng.uniform(0.3, 1.5, size=2)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fx * xs + fy * ys) + phase)
        channels.append(rng.uniform(70, 180) + rng.uniform(20, 45) * wave)
    background = np.stack(channels, axis=-1)
    return background + rng.normal(0, 5, size=background.shape)


def distinct_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """count×3 saturated RGB colours with evenly spaced hues (random offset)."""
    hues = (rng.uniform() + np.arange(count) / count) % 1.0
    saturation, value = rng.uniform(0.7, 0.95), rng.uniform(0.8, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hues[:, None] * 6) % 6  # standard HSV -> RGB
    rgb = value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb * 255


def shape_mask(rng: np.random.Generator, kind: int, height: int, width: int) -> np.ndarray:
    """H×W bool mask of one random ellipse (0), rectangle (1) or triangle (2)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    short = min(height, width)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    ry, rx = rng.uniform(0.12, 0.3, size=2) * short
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        u = (xs - cx) * np.cos(angle) + (ys - cy) * np.sin(angle)
        v = -(xs - cx) * np.sin(angle) + (ys - cy) * np.cos(angle)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    if kind == 1:
        return (np.abs(xs - cx) <= rx) & (np.abs(ys - cy) <= ry)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.3, 0.3, size=3)
    radius = max(rx, ry)
    vx, vy = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    inside = np.ones((height, width), dtype=bool)
    for i in range(3):  # counter-clockwise vertices: every edge has the inside on its left
        j = (i + 1) % 3
        cross = (vx[j] - vx[i]) * (ys - vy[i]) - (vy[j] - vy[i]) * (xs - vx[i])
        inside &= cross >= 0
    return inside


def tight_boxes(masks: np.ndarray) -> np.ndarray:
    """N×H×W bool (each non-empty) -> N×4 float32 xyxy with x2/y2 = last index + 1."""
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, dtype=np.float32).reshape(-1, 4)


@DATASETS.register_module(name="sample")
class SampleShapesDataset(SambenchDataset):
    """Deterministic synthetic images with 1..max_instances visible shapes each.

    Args:
        split: "train" or "eval" (different images for the same seed).
        num_images: number of samples.
        height / width: image size in pixels (each at least 32).
        max_instances: most shapes drawn per image (occluded ones may be dropped).
        seed: base random seed.
    """

    TASKS = (tasks.PROMPTED_INSTANCE,)

    def __init__(
        self,
        *,
        split: str,
        num_images: int = 8,
        height: int = 96,
        width: int = 128,
        max_instances: int = 3,
        seed: int = 0,
    ):
        if split not in SPLIT_CODES:
            raise ConfigError(f"dataset 'sample': split must be 'train' or 'eval', got '{split}'")
        if num_images < 0 or max_instances < 1 or seed < 0 or min(height, width) < MIN_SIDE:
            raise ConfigError(
                f"dataset 'sample' needs num_images >= 0, max_instances >= 1, seed >= 0 and height, width >= {MIN_SIDE}; "
                f"got num_images={num_images}, max_instances={max_instances}, seed={seed}, height={height}, width={width}"
            )
        self.split = split
        self.num_images = num_images
        self.height, self.width = height, width
        self.max_instances = max_instances
        self.seed = seed
        self.class_names = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.num_images

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One attempt: (H×W×3 uint8 image, N×H×W bool visible masks, N int64 kinds)."""
        count = int(rng.integers(1, self.max_instances + 1))
        kinds = rng.integers(0, len(CLASS_NAMES), size=count)
        colours = distinct_colours(rng, count)
        image = smooth_background(rng, self.height, self.width)
        shapes = np.stack([shape_mask(rng, int(kind), self.height, self.width) for kind in kinds])
        for shape, colour in zip(shapes, colours):  # later shapes are drawn on top
            image[shape] = colour + rng.normal(0, 4, size=(int(shape.sum()), 3))
        covered_later = np.zeros((self.height, self.width), dtype=bool)
        visible = np.zeros_like(shapes)
        for i in range(count - 1, -1, -1):
            visible[i] = shapes[i] & ~covered_later
            covered_later |= shapes[i]
        keep = visible.reshape(count, -1).sum(axis=1) >= MIN_VISIBLE_PIXELS
        return np.clip(image, 0, 255).astype(np.uint8), visible[keep], kinds[keep].astype(np.int64)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"sample dataset index {index} out of range 0..{self.num_images - 1}")
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        for _ in range(MAX_ATTEMPTS):
            image, masks, kinds = self._draw(rng)
            if len(masks):
                break
        else:  # pragma: no cover - the top shape is always fully visible and large enough
            raise RuntimeError(f"sample dataset could not draw a visible shape for index {index}")
        return Sample(
            index=index,
            image=image,
            masks=torch.from_numpy(masks),
            boxes=torch.from_numpy(tight_boxes(masks)),
            class_ids=torch.from_numpy(kinds),
            class_names=self.class_names,
            meta={"name": f"sample_{self.split}_{index:03d}"},
        )
