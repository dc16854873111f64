"""PerSeg (PerSAM's one-shot personalisation benchmark): one concept per object folder.

Layout: ``root/Images/<object>/NN.jpg`` and ``root/Annotations/<object>/NN.png``. The official
masks are 8-bit palette PNGs whose index 1 reads as RGB (128, 0, 0); 0/255 grayscale and RGB
masks work too (foreground = any channel > 0). Per object, the images named by
``reference_ids`` are the references (``00`` in the paper) and every other image is a sample.
PerSAM has no training split: ``split="train"`` and ``split="eval"`` give the same samples
(PerSAM-F fits its two weights on each object's reference at prediction time).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from sambench import tasks
from sambench.data.base import (
    SambenchDataset,
    inside_root,
    read_image_for,
    read_mask_rgb,
    resolve_root,
)
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, closest
from sambench.structures import Reference, Sample

logger = logging.getLogger(__name__)

ROOT_HINT = "a PerSeg folder holding Images/<object>/NN.jpg and Annotations/<object>/NN.png"
IMAGE_SUFFIX = ".jpg"
MASK_SUFFIX = ".png"
#: Objects whose references stay in memory (samples come sorted by object, so a loader walking
#: the dataset in order reads each object's references once without holding all 40 objects).
CACHED_OBJECTS = 4


def reference_id_list(reference_ids) -> list[str]:
    """``"00"`` / ``0`` / ``["00", 1]`` -> ``["00"]`` / ``["00"]`` / ``["00", "01"]``."""
    if isinstance(reference_ids, (str, int)):
        reference_ids = [reference_ids]
    ids = [f"{i:02d}" if isinstance(i, int) else str(i) for i in reference_ids]
    if not ids:
        raise ConfigError("dataset 'perseg': reference_ids must name at least one image id, e.g. ['00']")
    return list(dict.fromkeys(ids))


def read_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image (H×W×3 uint8 RGB, upright) and its mask as read in RGB (H×W×3 uint8, 16-bit
    values clipped, not scaled); their sizes must match. The mask is read first: when its size
    is that of the image's stored pixels and not of the upright ones (EXIF orientation), it was
    made on the stored pixels and the image is read as stored."""
    mask_rgb = read_mask_rgb(mask_path)
    return read_image_for(image_path, mask_path, mask_rgb), mask_rgb


@DATASETS.register_module(name="perseg")
class PerSegDataset(SambenchDataset):
    """PerSeg: one :class:`Sample` per non-reference image, sorted by object then image id.

    Each sample holds ``image`` (H×W×3 uint8), ``masks`` (1×H×W bool, the object),
    ``references`` (the object's reference views, shared by its samples) and ``meta`` with
    ``object``, ``image_id``, ``name`` (``<object>_<id>``) and ``prediction_path``
    (``<object>/<id>``, where the official code writes its output mask).

    Args:
        split: "train" or "eval"; both give the same samples (PerSAM has no training split).
        root: folder holding ``Images/`` and ``Annotations/``.
        reference_ids: image ids used as references per object (several = few-shot).
        objects: keep only these object folders (None = all).
    """

    TASKS = (tasks.PERSONALIZE,)

    def __init__(
        self,
        *,
        split: str,
        root: str,
        reference_ids: list[str] = ("00",),
        objects: list[str] | None = None,
    ):
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset 'perseg': split must be 'train' or 'eval', got '{split}'")
        self.split = split
        self.root = resolve_root(root, "perseg", ROOT_HINT)
        self.image_root = inside_root(self.root, "Images")
        self.mask_root = inside_root(self.root, "Annotations")
        if not self.image_root.is_dir():
            raise DatasetError(f"image folder not found: {self.image_root} (expected {ROOT_HINT})")
        self.reference_ids = reference_id_list(reference_ids)
        self.objects = self._select_objects(objects)
        self.entries: list[tuple[str, str]] = []
        for obj in self.objects:
            self.entries += [(obj, image_id) for image_id in self._index_object(obj)]
        self._references: OrderedDict[str, list[Reference]] = OrderedDict()

    def _select_objects(self, objects: list[str] | None) -> list[str]:
        found, seen, repeated = [], {os.path.realpath(self.image_root)}, []
        for folder in sorted(p for p in self.image_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            real = os.path.realpath(folder)
            if real in seen:  # a link back to Images/ or a second link to another object's folder
                repeated.append(folder)
                continue
            seen.add(real)
            found.append(folder.name)
        if repeated:
            logger.warning(
                "%s: skipped %d object folder link(s) leading to a folder already listed (first: %s -> %s)",
                self.image_root, len(repeated), repeated[0], os.path.realpath(repeated[0]),
            )
        if not found:
            raise DatasetError(f"no object folders in {self.image_root} (expected Images/<object>/NN.jpg)")
        if objects is None:
            return found
        if isinstance(objects, str):
            objects = [objects]
        for name in objects:
            if name not in found:
                raise DatasetError(
                    f"unknown PerSeg object '{name}' in {self.image_root}{closest(name, found)}; "
                    f"valid: {', '.join(found)}"
                )
        return sorted(set(objects))

    def image_path(self, obj: str, image_id: str) -> Path:
        return inside_root(self.image_root, f"{obj}/{image_id}{IMAGE_SUFFIX}")

    def mask_path(self, obj: str, image_id: str) -> Path:
        return inside_root(self.mask_root, f"{obj}/{image_id}{MASK_SUFFIX}")

    def _index_object(self, obj: str) -> list[str]:
        """Sorted non-reference image ids of one object, after checking every mask exists."""
        folder = inside_root(self.image_root, obj)
        ids = sorted(p.stem for p in folder.glob(f"*{IMAGE_SUFFIX}") if p.is_file())
        for ref in self.reference_ids:
            if ref not in ids:
                raise DatasetError(
                    f"object folder {folder} has no reference image {ref}{IMAGE_SUFFIX} "
                    f"(expected every object to hold the reference_ids {self.reference_ids})"
                )
        for image_id in ids:
            if not self.mask_path(obj, image_id).is_file():
                raise DatasetError(
                    f"mask not found: {self.mask_path(obj, image_id)} "
                    f"(expected one for image {self.image_path(obj, image_id)})"
                )
        targets = [i for i in ids if i not in self.reference_ids]
        if not targets:
            raise DatasetError(f"object folder {folder} holds only reference images (expected one more image)")
        return targets

    def _load_reference(self, obj: str, image_id: str) -> Reference:
        image_path, path = self.image_path(obj, image_id), self.mask_path(obj, image_id)
        image, mask_rgb = read_pair(image_path, path)
        if not mask_rgb.any():
            raise DatasetError(f"empty reference mask: {path} (expected a non-empty object mask)")
        reference = Reference(image=image, mask_rgb=mask_rgb, name=f"{obj}/{image_id}")
        if not reference.mask.any():
            raise DatasetError(
                f"reference mask {path} has no foreground in its red channel "
                f"(expected a palette index 1, a 0/255 or a red mask: PerSAM reads the red channel)"
            )
        return reference

    def references(self, obj: str) -> list[Reference]:
        """The object's reference views, read once and kept for its samples."""
        if obj in self._references:
            self._references.move_to_end(obj)
        else:
            self._references[obj] = [self._load_reference(obj, ref) for ref in self.reference_ids]
            while len(self._references) > CACHED_OBJECTS:
                self._references.popitem(last=False)
        return self._references[obj]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        obj, image_id = self.entries[index]
        image, mask_rgb = read_pair(self.image_path(obj, image_id), self.mask_path(obj, image_id))
        return Sample(
            index=index,
            image=image,
            masks=torch.from_numpy(mask_rgb.any(axis=-1)[None]),
            references=self.references(obj),
            meta={
                "object": obj,
                "image_id": image_id,
                "name": f"{obj}_{image_id}",
                "prediction_path": f"{obj}/{image_id}",
            },
        )
