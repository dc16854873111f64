"""DIT's image/expression preprocessing: letterbox to a square canvas, training augmentation.

Two pipelines (``method.image_pipeline``):

- ``official`` (default): the official code's steps on PIL images in uint8
  (:mod:`methods.dit.pil_steps`): resize the long side to ``size`` (512) with PIL
  bilinear, ``to_tensor``, ImageNet normalisation, centre zero-padding to ``size``². Training
  draws the long side from ``{size, size-32, …, min_side}`` and resizes the image **and** the
  0/255 mask with PIL, then colour jitter (PIL ``ImageEnhance``, p 0.8), optional blur,
  horizontal flip (p 0.5, "left"/"right" swapped in the expression), then normalise and pad.
- ``tensor``: the same geometry on float tensors on the model's device (``F.interpolate``
  bilinear with antialiasing, torchvision v2 ``ColorJitter``): faster on a GPU host with few CPU
  cores, not bit-faithful (differences ~1e-2 on the canvas).

Random draws come from torch's global RNG, which the engine seeds and stores in checkpoints.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from sambench.errors import ConfigError
from . import pil_steps
from .pil_steps import IMAGENET_MEAN, IMAGENET_STD, Placement, placement

__all__ = ["Placement", "placement", "letterbox", "unletterbox", "swap_left_right", "ReferringPreprocessor"]
PIPELINES = ("official", "tensor")
FLIP_TEXT = ("substring", "words")
_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_SWAP_MARK = "\x00"


def swap_left_right(text: str, mode: str = "substring") -> str:
    """The expression of a horizontally flipped image.

    ``substring`` (official): every lower-case "left" becomes "right" and vice versa, also inside
    words ("leftmost" -> "rightmost", "bright" -> "bleft"). ``words``: whole words only, any
    case, keeping the case.
    """
    if mode == "substring":
        return text.replace("right", _SWAP_MARK).replace("left", "right").replace(_SWAP_MARK, "left")

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.upper() if word.isupper() else other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, text)


def letterbox(x: torch.Tensor, where: Placement, size: int, mode: str = "bilinear") -> torch.Tensor:
    """B×C×H×W float -> B×C×size×size: resized (antialiased) into ``where``, zeros elsewhere."""
    resized = F.interpolate(x, size=(where.height, where.width), mode=mode, align_corners=False, antialias=mode == "bilinear")
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
        color_jitter: probability of colour jitter (brightness, contrast, saturation ±0.4) in
            training (official 0.8; 0 = off).
        gaussian_blur: probability of a Gaussian blur, radius uniform in [0.1, 2] (the paper's
            text; official code: off).
        flip: probability of the horizontal flip that swaps left/right (official 0.5).
        flip_text: ``substring`` (official ``str.replace``) or ``words`` (whole words).
        pipeline: ``official`` (PIL, uint8) or ``tensor`` (device tensors); see the module doc.
    """

    def __init__(self, *, size: int = 512, min_side: int = 320, color_jitter: float = 0.8,
                 gaussian_blur: float = 0.0, flip: float = 0.5, flip_text: str = "substring",
                 pipeline: str = "official"):
        if pipeline not in PIPELINES:
            raise ConfigError(f"unknown method.image_pipeline '{pipeline}'; valid: {', '.join(PIPELINES)}")
        if flip_text not in FLIP_TEXT:
            raise ConfigError(f"unknown method.augment.flip_text '{flip_text}'; valid: {', '.join(FLIP_TEXT)}")
        self.size, self.pipeline, self.flip_text = size, pipeline, flip_text
        self.long_sides = list(range(size, min_side - 1, -32)) or [size]
        self.draw = dict(long_sides=self.long_sides, jitter_p=color_jitter, strength=0.4, blur_p=gaussian_blur,
                         blur_sigma=(0.1, 2.0), flip_p=flip)
        self.jitter = v2.ColorJitter(0.4, 0.4, 0.4)

    # ----- evaluation -------------------------------------------------------------------------
    def evaluation(self, image: np.ndarray, device: torch.device) -> tuple[torch.Tensor, Placement]:
        """H×W×3 uint8 -> 1×3×S×S normalised canvas and the placement (for :func:`unletterbox`)."""
        where = placement(image.shape[:2], self.size, self.size)
        if self.pipeline == "official":
            canvas = pil_steps.normalised_canvas(pil_steps.resize(pil_steps.to_pil(image), where), where, self.size)
            return canvas[None].to(device), where
        return letterbox(self._normalise(self._pixels(image, device)), where, self.size), where

    # ----- training ---------------------------------------------------------------------------
    def training(self, image: np.ndarray, mask: torch.Tensor, text: str, device: torch.device):
        """Augmented -> (1×3×S×S canvas, 1×1×S×S soft target in [0, 1], expression)."""
        aug = pil_steps.draw_augmentation(**self.draw)
        if aug.flip:
            text = swap_left_right(text, self.flip_text)
        if self.pipeline == "official":
            canvas, target = self.official_training(image, mask, aug)
            return canvas[None].to(device), target[None].to(device), text
        return (*self._tensor_training(image, mask, aug, device), text)

    def official_training(self, image: np.ndarray, mask: torch.Tensor, aug: pil_steps.Augmentation):
        """The official order on PIL: resize image and mask -> jitter -> blur -> flip -> to_tensor
        -> normalise and pad. -> (3×S×S canvas, 1×S×S target)."""
        where = placement(image.shape[:2], aug.long_side, self.size)
        picture = pil_steps.resize(pil_steps.to_pil(image), where)
        target = pil_steps.resize(pil_steps.mask_to_pil(mask), where)
        if aug.jitter is not None:
            picture = pil_steps.color_jitter(picture, *aug.jitter)
        if aug.blur is not None:
            picture = pil_steps.gaussian_blur(picture, aug.blur)
        if aug.flip:
            picture, target = picture.transpose(0), target.transpose(0)  # FLIP_LEFT_RIGHT
        return pil_steps.normalised_canvas(picture, where, self.size), pil_steps.mask_canvas(target, where, self.size)

    def _tensor_training(self, image, mask, aug: pil_steps.Augmentation, device):
        where = placement(image.shape[:2], aug.long_side, self.size)
        pixels = self._pixels(image, device)
        target = mask.to(device=device, dtype=torch.float32)[None, None]
        if aug.jitter is not None:
            pixels = self.jitter(pixels)
        if aug.blur is not None:
            pixels = v2.functional.gaussian_blur(pixels, kernel_size=5, sigma=aug.blur)
        if aug.flip:
            pixels, target = pixels.flip(-1), target.flip(-1)
        canvas = letterbox(self._normalise(pixels.clamp(0, 1)), where, self.size)
        return canvas, letterbox(target, where, self.size)

    def _pixels(self, image: np.ndarray, device: torch.device) -> torch.Tensor:
        """H×W×3 uint8 -> 1×3×H×W float in [0, 1]."""
        return torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float() / 255.0

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std
