"""COCO instance segmentation (``instances_*.json``) for prompted-instance evaluation.

Layout: ``root/annotations/instances_val2017.json`` and ``root/val2017/<file_name>``. Each
sample holds one image with its instance masks, boxes (from the annotation ``bbox``) and
classes numbered 0..K-1 in sorted COCO category-id order.
"""

from __future__ import annotations

from typing import Any

from sambench import tasks
from sambench.data.base import SambenchDataset, inside_root, resolve_root
from sambench.data.coco_format import (
    contiguous_categories,
    infer_image_dir,
    instance_tensors,
    load_coco_json,
    read_coco_image,
)
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS
from sambench.structures import Sample

ROOT_HINT = "a folder holding annotations/ and the image folders"


@DATASETS.register_module(name="coco_instances")
class CocoInstancesDataset(SambenchDataset):
    """COCO instances: one :class:`Sample` per image that keeps at least one instance.

    Args:
        split: "train" (reads ``train_ann_file``) or "eval" (reads ``ann_file``).
        root: folder holding ``annotations/`` and the image folders.
        ann_file / train_ann_file: annotation json, relative to ``root``.
        image_dir / train_image_dir: image folder relative to ``root``; None infers it from
            the annotation file name (``instances_val2017.json`` -> ``val2017``).
        include_crowd: keep ``iscrowd=1`` annotations (RLE masks); skipped by default.
        min_area: drop annotations whose ``area`` is below this (pixels).
        max_instances: keep at most this many instances per image, largest area first.
        max_images: keep only the first N images (by id) that have an instance.
    """

    TASKS = (tasks.PROMPTED_INSTANCE,)

    def __init__(
        self,
        *,
        split: str,
        root: str,
        ann_file: str,
        train_ann_file: str | None = None,
        image_dir: str | None = None,
        train_image_dir: str | None = None,
        include_crowd: bool = False,
        min_area: float = 0.0,
        max_instances: int | None = None,
        max_images: int | None = None,
    ):
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset 'coco_instances': split must be 'train' or 'eval', got '{split}'")
        if max_instances is not None and max_instances < 1:
            raise ConfigError(f"dataset.max_instances must be >= 1 or null, got {max_instances}")
        if max_images is not None and max_images < 1:
            raise ConfigError(f"dataset.max_images must be >= 1 or null, got {max_images}")
        self.split = split
        self.root = resolve_root(root, "coco_instances", ROOT_HINT)
        if split == "train":
            if not train_ann_file:
                raise DatasetError("dataset 'coco_instances' needs dataset.train_ann_file for training")
            ann_name = train_ann_file
            folder_name = train_image_dir or infer_image_dir(train_ann_file, "dataset.train_image_dir")
        else:
            ann_name = ann_file
            folder_name = image_dir or infer_image_dir(ann_file, "dataset.image_dir")
        self.ann_path = inside_root(self.root, ann_name)
        self.image_folder = inside_root(self.root, folder_name)
        if not self.image_folder.is_dir():
            option = "dataset.train_image_dir" if split == "train" else "dataset.image_dir"
            raise DatasetError(f"image folder not found: {self.image_folder} (set {option})")
        self.include_crowd = include_crowd
        self.min_area = float(min_area)
        self.max_instances = max_instances

        skipped: dict = {}
        data = load_coco_json(self.ann_path, skipped=skipped)
        self.category_index, self.class_names = contiguous_categories(data["categories"], self.ann_path)
        self.num_invalid_annotations = sum(1 for kind, _ in skipped.values() if kind != "orphan")
        self._index_images(data)
        self._filtered = {"crowd": 0, "min_area": 0}
        kept = self._group_annotations(data)
        images = sorted((image for image in data["images"] if image["id"] in kept), key=lambda image: image["id"])
        if max_images is not None:
            images = images[:max_images]
        if not images:
            raise DatasetError(self._nothing_to_use(data, skipped))
        self.entries: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
            (image, kept[image["id"]]) for image in images
        ]

    def _index_images(self, data: dict[str, Any]) -> None:
        for image in data["images"]:
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                raise DatasetError(
                    f"annotation file {self.ann_path}: image {image['id']} needs a 'file_name' (a non-empty string)"
                )
            inside_root(self.image_folder, image["file_name"])  # refuses '..' and absolute names now

    def _nothing_to_use(self, data: dict[str, Any], skipped: dict) -> str:
        """Why no image kept an annotation (for the error when the dataset would be empty)."""
        reasons = [f"{len(data['images'])} image(s)", f"{len(data['annotations'])} usable annotation(s)"]
        if skipped:
            reasons.append(f"{len(skipped)} skipped (see the warning above)")
        if self._filtered["crowd"]:
            reasons.append(f"{self._filtered['crowd']} crowd (include_crowd=false)")
        if self._filtered["min_area"]:
            reasons.append(f"{self._filtered['min_area']} below min_area={self.min_area:g}")
        return (
            f"annotation file {self.ann_path}: no image has an annotation to evaluate or train on "
            f"({', '.join(reasons)}); expected at least one image with a usable instance annotation"
        )

    def _keep(self, ann: dict[str, Any]) -> bool:
        """Filter one (validated) annotation: crowd, area."""
        if ann.get("iscrowd", 0) and not self.include_crowd:
            self._filtered["crowd"] += 1
            return False
        if float(ann.get("area", 0.0)) < self.min_area:
            self._filtered["min_area"] += 1
            return False
        return True

    def _group_annotations(self, data: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
        """Kept annotations by image id (largest first when ``max_instances`` caps them)."""
        kept: dict[Any, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            if self._keep(ann):
                kept.setdefault(ann["image_id"], []).append(ann)
        if self.max_instances is not None:
            for image_id, anns in kept.items():
                ranked = sorted(anns, key=lambda ann: -float(ann.get("area", 0.0)))
                kept[image_id] = ranked[: self.max_instances]
        return kept

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        image_info, anns = self.entries[index]
        path = inside_root(self.image_folder, image_info["file_name"])
        image = read_coco_image(path, image_info)
        size = (int(image.shape[0]), int(image.shape[1]))
        return Sample(
            index=index,
            image=image,
            **instance_tensors(anns, image_info, path, size, self.ann_path, self.category_index),
            class_names=self.class_names,
            meta={
                "image_id": image_info["id"],
                "file_name": image_info["file_name"],
                "ann_ids": [ann.get("id") for ann in anns],
            },
        )
