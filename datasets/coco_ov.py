"""COCO for open-vocabulary instance recognition: ``coco_ov`` (48 base / 17 novel) and ``coco``
(all 80 classes, none novel).

Layout as ``coco_instances``: ``root/annotations/instances_val2017.json`` and
``root/val2017/<file_name>``. ``coco_ov`` training keeps only base-class instances (and the
images that have one) with the 48 base classes as vocabulary; evaluation keeps base + novel
instances (65 classes, 17 flagged novel); the 15 other COCO classes are dropped.
``class_names_file`` (``dataset.class_names_file``): per-class synonym lists for the text
embeddings, e.g. the official code's COCO lists written by ``tools/make_class_names.py``
(:func:`~sambench.data.open_vocab.read_class_names_file`); None = the annotation names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sambench import tasks
from sambench.data.base import inside_root, resolve_root
from sambench.data.coco_format import infer_image_dir, load_coco_json
from sambench.data.open_vocab import COCO_BASE_IDS, COCO_NOVEL_IDS, OpenVocabInstanceDataset
from sambench.errors import DatasetError
from sambench.registry import DATASETS

ROOT_HINT = "a folder holding annotations/ and the image folders"


class _CocoOpenVocab(OpenVocabInstanceDataset):
    """COCO instances with a category filter per split (see the module docstring)."""

    TASKS = (tasks.OPEN_VOCAB_INSTANCE,)
    NAME = "coco"

    def _split_ids(self, all_ids: list[int], split: str) -> tuple[list[int], list[int]]:
        """(kept category ids, novel category ids) of a split."""
        return all_ids, []

    def __init__(
        self,
        *,
        split: str,
        root: str,
        ann_file: str = "annotations/instances_val2017.json",
        train_ann_file: str = "annotations/instances_train2017.json",
        image_dir: str | None = None,
        train_image_dir: str | None = None,
        include_crowd: bool = False,
        min_area: float = 0.0,
        max_images: int | None = None,
        class_names_file: str | None = None,
    ):
        self._check_common(split, max_images)
        self.split = split
        self.root = resolve_root(root, self.NAME, ROOT_HINT)
        if split == "train":
            ann_name, option = train_ann_file, "dataset.train_image_dir"
            folder = train_image_dir or infer_image_dir(train_ann_file, option)
        else:
            ann_name, option = ann_file, "dataset.image_dir"
            folder = image_dir or infer_image_dir(ann_file, option)
        ann_path = inside_root(self.root, ann_name)
        self.image_folder = inside_root(self.root, folder)
        if not self.image_folder.is_dir():
            raise DatasetError(f"image folder not found: {self.image_folder} (set {option})")
        data = load_coco_json(ann_path)
        for image in data["images"]:
            if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
                raise DatasetError(f"annotation file {ann_path}: every image needs an 'id' and a 'file_name'")
        all_ids = [c.get("id") for c in data["categories"] if isinstance(c, dict)]
        keep, novel = self._split_ids(all_ids, split)
        self._build(data, ann_path, keep, novel, include_crowd=include_crowd, min_area=min_area, max_images=max_images,
                    class_names_file=class_names_file)

    def image_path(self, image_info: dict[str, Any]) -> tuple[Path, str]:
        return inside_root(self.image_folder, image_info["file_name"]), image_info["file_name"]


@DATASETS.register_module(name="coco")
class CocoOpenVocabAll(_CocoOpenVocab):
    """COCO instances, all 80 classes as vocabulary, no novel class."""

    NAME = "coco"


@DATASETS.register_module(name="coco_ov")
class CocoOpenVocab(_CocoOpenVocab):
    """COCO open-vocabulary split: train on 48 base classes, evaluate on 48 base + 17 novel."""

    NAME = "coco_ov"

    def _split_ids(self, all_ids: list[int], split: str) -> tuple[list[int], list[int]]:
        if split == "train":
            return list(COCO_BASE_IDS), []
        return list(COCO_BASE_IDS) + list(COCO_NOVEL_IDS), list(COCO_NOVEL_IDS)
