"""Base class of every dataset adapter and safe file access inside a dataset root."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from sambench.errors import DatasetError
from sambench.structures import Sample

#: Task names. A method declares one ``TASK``; a dataset the ``TASKS`` it can serve.
PROMPTED_INSTANCE = "prompted_instance"  # GT box/point prompts -> instance masks (mean IoU)
PERSONALIZE = "personalize"
OPEN_VOCAB_INSTANCE = "open_vocab_instance"
SEMANTIC_FEW_SHOT = "semantic_few_shot"
REFERRING = "referring"
IMAGE_DISTILLATION = "image_distillation"  # images only: a student learns a teacher's embeddings


class SambenchDataset(Dataset):
    """A map-style dataset returning :class:`~sambench.structures.Sample`.

    Subclasses set ``TASKS`` and ``class_names`` and implement ``__len__``/``__getitem__``.
    """

    TASKS: tuple[str, ...] = ()
    class_names: list[str] = []

    def __getitem__(self, index: int) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError


def resolve_root(root: str | None, dataset: str, hint: str) -> Path:
    """Check that a dataset root exists; ``hint`` says what the folder should contain."""
    if not root:
        raise DatasetError(f"dataset '{dataset}' needs dataset.root=<folder> ({hint})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"dataset root not found: {path} (expected {hint})")
    return path.resolve()


def inside_root(root: Path, relative: str) -> Path:
    """Join ``relative`` to ``root``, refusing absolute paths and ``..`` escapes.

    The check is lexical: names taken from annotation files cannot leave the root, while
    symlinks the user placed inside it (e.g. ``root/val2017 -> /big/disk/val2017``) work.
    """
    path = Path(os.path.normpath(root / relative))
    if path != root and root not in path.parents:
        raise DatasetError(f"path escapes the dataset root {root}: '{relative}'")
    return path


def read_image(path: Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB; a clear DatasetError names unreadable files."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: expected a JPEG/PNG file ({exc})") from None


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel label PNG (L or palette P) as H×W uint8 indices (no RGB conversion)."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetError(f"label map {path} has mode {img.mode}; expected a single-channel L or P PNG")
            return np.array(img)
    except FileNotFoundError:
        raise DatasetError(f"label map not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot read label map {path} ({exc})") from None
