"""DIT's image steps as the official code runs them: on PIL images, in uint8, with torchvision.

Evaluation: ``resize`` (torchvision on a PIL image = PIL bilinear, antialiased when shrinking)
to ``(round(h·r), round(w·r))`` with ``r = size / long side`` -> ``to_tensor`` (uint8 / 255,
float32) -> ``normalize`` (ImageNet mean/std) -> zero canvas ``size``² at ``top = round(dh/2 −
0.1)``, ``left = round(dw/2 − 0.1)``. Training adds, in this order: the random long side (image
**and** mask resized as PIL images, the 0/255 mask in mode ``L``), colour jitter (PIL
``ImageEnhance`` brightness, contrast and saturation in a random order, each factor uniform in
``[1 − s, 1 + s]``), an optional Gaussian blur, the horizontal flip. Random draws come from
torch's global RNG (the engine seeds it and stores it in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageEnhance, ImageFilter

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ColorJitter's three enhancers, in the official index order (0 brightness, 1 contrast, 2 saturation)
ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


@dataclass(frozen=True)
class Placement:
    """Where the resized image sits on the canvas: top/left offsets and its height/width."""

    top: int
    left: int
    height: int
    width: int


def placement(original: tuple[int, int], long_side: int, size: int) -> Placement:
    """The official ``resize_according_to_long_side`` + ``NormalizeAndPad`` geometry: new size
    ``round(side · long_side / max(h, w))`` (Python rounding), offsets ``round(d / 2 − 0.1)``."""
    h, w = original
    ratio = float(long_side / float(max(h, w)))
    nh, nw = max(1, round(h * ratio)), max(1, round(w * ratio))
    return Placement(round((size - nh) / 2.0 - 0.1), round((size - nw) / 2.0 - 0.1), nh, nw)


@dataclass(frozen=True)
class Augmentation:
    """One draw of the training augmentation (what the official transforms pick at random).

    ``jitter``: None (not applied) or the enhancer order (indices into :data:`ENHANCERS`) with
    one factor per enhancer index; ``blur``: None or the Gaussian radius; ``flip``: mirror.
    """

    long_side: int
    jitter: tuple[tuple[int, ...], tuple[float, float, float]] | None = None
    blur: float | None = None
    flip: bool = False


def draw_augmentation(*, long_sides: list[int], jitter_p: float, strength: float, blur_p: float,
                      blur_sigma: tuple[float, float], flip_p: float) -> Augmentation:
    """Draw the random choices in the official order: long side, jitter (p, order, factors),
    blur (p, radius), flip (p). Draws that a probability of 0 makes pointless are skipped."""
    long_side = long_sides[int(torch.randint(len(long_sides), ()))]
    jitter = None
    if jitter_p > 0 and float(torch.rand(())) < jitter_p:
        order = tuple(int(i) for i in torch.randperm(3))
        factors = tuple(float(f) for f in torch.empty(3, dtype=torch.float64).uniform_(1 - strength, 1 + strength))
        jitter = (order, factors)
    blur = None
    if blur_p > 0 and float(torch.rand(())) < blur_p:
        blur = float(torch.empty((), dtype=torch.float64).uniform_(*blur_sigma))
    flip = flip_p > 0 and float(torch.rand(())) < flip_p
    return Augmentation(long_side, jitter, blur, bool(flip))


def to_pil(image: np.ndarray) -> Image.Image:
    """H×W×3 uint8 RGB -> PIL RGB."""
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")


def mask_to_pil(mask: torch.Tensor | np.ndarray) -> Image.Image:
    """H×W bool/0-1 mask -> PIL ``L`` with values 0/255 (the official ``Image.fromarray(m * 255)``)."""
    values = np.asarray(torch.as_tensor(mask).cpu().numpy(), dtype=np.uint8) * np.uint8(255)
    return Image.fromarray(values, mode="L")


def resize(image: Image.Image, where: Placement) -> Image.Image:
    """torchvision's ``resize`` of a PIL image to (height, width): PIL bilinear."""
    return TF.resize(image, [where.height, where.width], interpolation=TF.InterpolationMode.BILINEAR)


def color_jitter(image: Image.Image, order: tuple[int, ...], factors: tuple[float, float, float]) -> Image.Image:
    """Apply the enhancers in ``order``, enhancer ``i`` with ``factors[i]`` (uint8 each time)."""
    for index in order:
        image = ENHANCERS[index](image).enhance(factors[index])
    return image


def gaussian_blur(image: Image.Image, radius: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=radius))


def normalised_canvas(image: Image.Image, where: Placement, size: int) -> torch.Tensor:
    """PIL RGB (already resized to ``where``) -> 3×size×size: to_tensor, normalize, zero pad."""
    pixels = TF.normalize(TF.to_tensor(image), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    canvas = torch.zeros(3, size, size)
    canvas[:, where.top : where.top + where.height, where.left : where.left + where.width] = pixels
    return canvas


def mask_canvas(mask: Image.Image, where: Placement, size: int) -> torch.Tensor:
    """PIL ``L`` mask (resized) -> 1×size×size soft target in [0, 1] (to_tensor = value / 255)."""
    canvas = torch.zeros(1, size, size)
    canvas[:, where.top : where.top + where.height, where.left : where.left + where.width] = TF.to_tensor(mask)
    return canvas
