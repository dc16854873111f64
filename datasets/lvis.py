"""LVIS v1 instance segmentation for open-vocabulary recognition (rare categories = novel).

Layout: ``root/annotations/lvis_v1_{train,val}.json`` and the COCO 2017 image folders under
``root``. LVIS v1 images have no usable ``file_name``: the path is the last two components of
``coco_url`` (``http://images.cocodataset.org/train2017/000000391895.jpg`` ->
``root/train2017/000000391895.jpg``), whatever the split (val images live in train2017 too).
Training drops rare ('r') categories (vocabulary = common + frequent) and the images left
without an instance; evaluation keeps all categories and flags the rare ones novel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sambench import tasks
from sambench.data.base import inside_root, resolve_root
from sambench.data.coco_format import load_coco_json
from sambench.data.open_vocab import OpenVocabInstanceDataset, synonyms
from sambench.errors import DatasetError
from sambench.registry import DATASETS

ROOT_HINT = "a folder holding annotations/lvis_v1_*.json and the COCO 2017 image folders"
FREQUENCIES = ("r", "c", "f")


def coco_url_path(url: str) -> str:
    """``http://images.cocodataset.org/val2017/000000391895.jpg`` -> ``val2017/000000391895.jpg``."""
    parts = [part for part in url.split("/") if part]
    if len(parts) < 2:
        raise DatasetError(f"cannot take an image path from coco_url '{url}' (expected .../<folder>/<file>)")
    return "/".join(parts[-2:])


@DATASETS.register_module(name="lvis")
class LvisDataset(OpenVocabInstanceDataset):
    """LVIS v1: one sample per image with at least one kept instance.

    Args:
        split: "train" (reads ``train_ann_file``) or "eval" (reads ``ann_file``).
        root: folder holding the annotation files and the COCO image folders.
        ann_file / train_ann_file: annotation json relative to ``root``.
        train_without_rare: drop rare categories (and their instances) in training.
        min_area: drop annotations whose ``area`` is below this (pixels).
        max_images: keep only the first N images (by id) that have an instance.
        class_names_file: per-class synonym lists for the text embeddings (JSON, category id or
            name -> list of names; :func:`~sambench.data.open_vocab.read_class_names_file`).
            None = the official code's LVIS vocabulary: each category's ``name`` split by
            :func:`synonyms` (the annotation file's ``synonyms`` are not used by the official code).

    Besides the common attributes (``class_names``, ``category_ids``, ``novel``,
    ``ann_file_path``) it exposes ``frequency`` ('r'/'c'/'f' per class) and
    ``class_synonyms`` (the categories' ``synonyms`` lists, or :func:`synonyms` of the name).
    """

    TASKS = (tasks.OPEN_VOCAB_INSTANCE,)
    NAME = "lvis"
    ANNOTATION_FORMAT = "lvis"

    def __init__(
        self,
        *,
        split: str,
        root: str,
        ann_file: str = "annotations/lvis_v1_val.json",
        train_ann_file: str = "annotations/lvis_v1_train.json",
        train_without_rare: bool = True,
        min_area: float = 0.0,
        max_images: int | None = None,
        class_names_file: str | None = None,
    ):
        self._check_common(split, max_images)
        self.split = split
        self.root = resolve_root(root, self.NAME, ROOT_HINT)
        ann_path = inside_root(self.root, train_ann_file if split == "train" else ann_file)
        data = load_coco_json(ann_path)
        frequency: dict[int, str] = {}
        for category in data["categories"]:
            if not isinstance(category, dict) or category.get("frequency") not in FREQUENCIES:
                raise DatasetError(
                    f"annotation file {ann_path}: category {category.get('id') if isinstance(category, dict) else category} "
                    "needs a 'frequency' of 'r', 'c' or 'f' (is this an LVIS v1 file?)"
                )
            frequency[category.get("id")] = category["frequency"]
        rare = [cat_id for cat_id, freq in frequency.items() if freq == "r"]
        if split == "train":
            keep = [cat_id for cat_id, freq in frequency.items() if not (train_without_rare and freq == "r")]
            novel: list[int] = []
        else:
            keep, novel = list(frequency), rare
        self._build(data, ann_path, keep, novel, include_crowd=False, min_area=min_area, max_images=max_images,
                    class_names_file=class_names_file)
        self.frequency: list[str] = [frequency[cat_id] for cat_id in self.category_ids]
        self.class_synonyms: list[list[str]] = [
            [str(s) for s in c.get("synonyms") or []] or synonyms(c["name"]) for c in self.categories
        ]

    def image_path(self, image_info: dict[str, Any]) -> tuple[Path, str]:
        if isinstance(image_info.get("coco_url"), str):
            relative = coco_url_path(image_info["coco_url"])
        elif isinstance(image_info.get("file_name"), str):
            relative = image_info["file_name"]
        else:
            raise DatasetError(f"annotation file {self.ann_path}: image {image_info.get('id')} has no 'coco_url'")
        return inside_root(self.root, relative), relative
