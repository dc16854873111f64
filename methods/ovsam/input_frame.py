"""Open-Vocabulary SAM's evaluation input, as the official mmdet/mmcv test pipeline builds it.

Official (``seg/configs/_base_/datasets/coco_ov_instance_lsj.py`` test pipeline + the
``OVSAMDataPreprocessor``): the uint8 image is resized by mmcv's ``imrescale`` to fit 1024×1024
keeping its aspect ratio (:func:`rescale_size`; cv2 ``INTER_LINEAR`` on uint8, no antialiasing,
the result rounded to uint8 by cv2), then converted to float, normalised with SAM's ImageNet
mean/std and zero-padded bottom/right to 1024². SAM's own predictor instead resizes with PIL
(bilinear, antialiased): up to 1 grey level (0.0175 in normalised units) apart on 20 % of the
pixels of a COCO photo; ``method.image_resize=pil`` keeps that path.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGE_RESIZES = ("cv2", "pil")


def rescale_size(height: int, width: int, scale: tuple[int, int] = (1024, 1024)) -> tuple[int, int]:
    """mmcv ``rescale_size`` with a (long, short) bound: factor = min(long / max(h, w),
    short / min(h, w)); new side = ``int(side · factor + 0.5)``. -> (new height, new width)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_cv2(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """H×W(×C) array -> size (h, w) with cv2 (``INTER_LINEAR``, or ``INTER_NEAREST`` for masks),
    as mmcv's ``imresize``; the dtype is kept (uint8 results are rounded by cv2)."""
    flag = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(array), (int(size[1]), int(size[0])), interpolation=flag)
    return out.reshape(int(size[0]), int(size[1]), *array.shape[2:])


def official_test_image(image: np.ndarray, image_size: int = 1024) -> np.ndarray:
    """H×W×3 uint8 -> h×w×3 uint8 resized as the official test pipeline (long side ``image_size``)."""
    return resize_cv2(image, rescale_size(image.shape[0], image.shape[1], (image_size, image_size)))


def eval_pixels(sam, image: np.ndarray, resize: str = "cv2") -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×S×S: resized (``cv2`` = official, ``pil`` = SamPredictor), SAM-normalised,
    zero-padded bottom/right (``sam``: a :class:`~sambench.backbones.sam.SamBackbone`)."""
    if resize == "pil":
        return sam.preprocess(image)
    if resize != "cv2":
        raise ValueError(f"unknown image resize '{resize}'; valid: {', '.join(IMAGE_RESIZES)}")
    resized = resize_cv2(image, sam.input_size(image.shape[:2]))  # SAM v1: mmcv's rescale_size, the same numbers
    pixels = torch.as_tensor(resized, device=sam.device).permute(2, 0, 1).contiguous()[None]
    return sam.normalize_pixels(pixels)
