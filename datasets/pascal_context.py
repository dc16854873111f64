"""PASCAL-Context with 59 classes (background dropped: reduce_zero_label, 255 = ignore).

Layout (after mmseg-style conversion of ``trainval_merged.json`` to label PNGs 0..59)::

    <root>/VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    <root>/VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
    <root>/VOCdevkit/VOC2010/ImageSets/SegmentationContext/{train,val}.txt   # one <id> a line

``root`` may be the folder holding ``VOCdevkit/``, ``VOCdevkit/`` itself or ``VOC2010/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sambench.data.base import inside_root
from sambench.data.semantic import SemanticEntry, SemanticSegmentationDataset, reduce_zero_label
from sambench.errors import DatasetError
from sambench.registry import DATASETS

#: The 59 classes in label order 1..59 (mmseg's PascalContextDataset59 order).
PASCAL_CONTEXT_59_CLASSES = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground",
    "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
    "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table",
    "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]
IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassContext"
LIST_DIR = "ImageSets/SegmentationContext"


@DATASETS.register_module(name="pascal_context")
class PascalContextDataset(SemanticSegmentationDataset):
    """PASCAL-Context-59, in the order of the split list sorted by image id.

    Sample ``meta``: ``file_name`` (``JPEGImages/<id>.jpg``, relative to ``VOC2010/``) and
    ``prediction_path`` (``<id>``).

    Args:
        split: "train" (reads ``train_split``) or "eval" (``eval_split``).
        root: the folder holding ``VOCdevkit/VOC2010``, ``VOCdevkit/`` or ``VOC2010/`` itself.
        train_split / eval_split: split list names under ``ImageSets/SegmentationContext`` (train / val).
        max_samples: keep only the first N samples; None = all (the few-shot subset is
            :class:`~sambench.data.few_shot.FewShotSubset`, built by the composition root).
    """

    NAME = "pascal_context"
    ROOT_HINT = (
        f"VOC2010/ (holding {IMAGE_DIR}/, {LABEL_DIR}/ and {LIST_DIR}/<split>.txt), "
        "or a folder holding VOCdevkit/VOC2010"
    )
    CLASS_NAMES = tuple(PASCAL_CONTEXT_59_CLASSES)

    def locate_root(self, root: Path) -> Path:
        for candidate in (root / "VOCdevkit" / "VOC2010", root / "VOC2010", root):
            if (candidate / IMAGE_DIR).is_dir():
                return candidate
        raise DatasetError(f"PASCAL-Context layout not found under {root}: expected {self.ROOT_HINT}")

    def list_entries(self, split_name: str) -> list[SemanticEntry]:
        list_file = inside_root(self.root, f"{LIST_DIR}/{split_name}.txt")
        if not list_file.is_file():
            raise DatasetError(
                f"split list not found: {list_file} (expected {LIST_DIR}/{split_name}.txt with one image id a line)"
            )
        try:
            text = list_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"cannot read split list {list_file} ({exc}); expected UTF-8 text, one image id a line") from None
        ids = sorted({line.strip() for line in text.splitlines() if line.strip()})
        if not ids:
            raise DatasetError(f"split list {list_file} names no image (expected one image id a line)")
        entries = []
        for image_id in ids:
            image = inside_root(self.root, f"{IMAGE_DIR}/{image_id}.jpg")
            label = inside_root(self.root, f"{LABEL_DIR}/{image_id}.png")
            if not image.is_file():
                raise DatasetError(f"image not found: {image} (listed in {list_file})")
            if not label.is_file():
                raise DatasetError(
                    f"label map not found: {label} (listed in {list_file}; {LABEL_DIR} is written by converting "
                    f"trainval_merged.json with the Detail API)"
                )
            entries.append(SemanticEntry(image, label, image_id))
        return entries

    def convert_labels(self, labels: np.ndarray) -> np.ndarray:
        return reduce_zero_label(labels)

    def label_signature(self) -> str:
        return "reduce_zero_label"
