"""DIT's image/expression preprocessing: letterbox to a square canvas, training augmentation.

Evaluation: resize the long side to ``size`` (512), normalise with the ImageNet mean/std, pad
with zeros to ``size``×``size`` centred. Training additionally draws the long side from
``{size, size-32, …, min_side}``, applies ColorJitter(0.4, 0.4, 0.4) with probability 0.8
(optionally a Gaussian blur, the paper's text), and flips horizontally with probability 0.5,
swapping the words "left" and "right" in the expression. Everything runs on tensors on the
model's device (torch's RNG, which the engine seeds and checkpoints).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """Swap the words "left" and "right" (whole words, keeping their case): the expression of a
    horizontally flipped image."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


@dataclass(frozen=True)
class Placement:
    """Where the resized image sits on the canvas: top/left offsets and its height/width."""

    top: int
    left: int
    height: int
    width: int


def placement(original: tuple[int, int], long_side: int, size: int) -> Placement:
    """Resize keeping the aspect ratio so the long side is ``long_side``; centre on ``size``²."""
    h, w = original
    scale = long_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    return Placement((size - nh) // 2, (size - nw) // 2, nh, nw)


def letterbox(x: torch.Tensor, where: Placement, size: int, mode: str = "bilinear") -> torch.Tensor:
    """B×C×H×W float -> B×C×size×size: resized into ``where``, zeros elsewhere."""
    resized = F.interpolate(x, size=(where.height, where.width), mode=mode, align_corners=False)
    canvas = x.new_zeros(x.shape[0], x.shape[1], size, size)
    canvas[:, :, where.top : where.top + where.height, where.left : where.left + where.width] = resized
    return canvas


def unletterbox(logits: torch.Tensor, where: Placement, original: tuple[int, int]) -> torch.Tensor:
    """Canvas-sized maps B×1×S×S -> the un-padded region resized bilinearly to the original B×1×H×W."""
    crop = logits[:, :, where.top : where.top + where.height, where.left : where.left + where.width]
    return F.interpolate(crop, size=original, mode="bilinear", align_corners=False)


class ReferringPreprocessor:
    """Samples (uint8 image, bool mask, expression) -> normalised canvases for the model.

    Args:
        size: canvas side (official 512).
        min_side: smallest random long side in training (steps of 32 down from ``size``).
        color_jitter: probability of ColorJitter(0.4, 0.4, 0.4) in training (0 = off).
        gaussian_blur: probability of a Gaussian blur in training (paper; official code: 0).
        flip: probability of the horizontal flip that swaps left/right (0 = off).
    """

    def __init__(self, *, size: int = 512, min_side: int = 320, color_jitter: float = 0.8,
                 gaussian_blur: float = 0.0, flip: float = 0.5):
        self.size, self.flip = size, flip
        self.long_sides = list(range(size, min_side - 1, -32)) or [size]
        self.jitter = v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4)], p=color_jitter) if color_jitter > 0 else None
        self.blur = v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 2.0))], p=gaussian_blur) if gaussian_blur > 0 else None

    def _pixels(self, image: np.ndarray, device: torch.device) -> torch.Tensor:
        """H×W×3 uint8 -> 1×3×H×W float in [0, 1]."""
        return torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float() / 255.0

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def evaluation(self, image: np.ndarray, device: torch.device) -> tuple[torch.Tensor, Placement]:
        """-> 1×3×S×S normalised canvas and the placement (for :func:`unletterbox`)."""
        where = placement(image.shape[:2], self.size, self.size)
        return letterbox(self._normalise(self._pixels(image, device)), where, self.size), where

    def training(self, image: np.ndarray, mask: torch.Tensor, text: str, device: torch.device):
        """Augmented -> (1×3×S×S canvas, 1×1×S×S soft target in [0, 1], expression)."""
        pixels = self._pixels(image, device)
        target = mask.to(device=device, dtype=torch.float32)[None, None]
        long_side = self.long_sides[int(torch.randint(len(self.long_sides), ()))]
        where = placement(image.shape[:2], long_side, self.size)
        if self.jitter is not None:
            pixels = self.jitter(pixels)
        if self.blur is not None:
            pixels = self.blur(pixels)
        if self.flip > 0 and float(torch.rand(())) < self.flip:
            pixels, target, text = pixels.flip(-1), target.flip(-1), swap_left_right(text)
        canvas = letterbox(self._normalise(pixels.clamp(0, 1)), where, self.size)
        return canvas, letterbox(target, where, self.size), text
