"""Open-vocabulary instance data: the COCO 48/17 split, class-name synonyms and a shared base
for COCO-format open-vocabulary datasets (``datasets/coco_ov.py``, ``datasets/lvis.py``).

A dataset built on :class:`OpenVocabInstanceDataset` exposes

- ``class_names``: the vocabulary of the split, contiguous (class id = index);
- ``category_ids``: class id -> original category id of the annotation file;
- ``novel``: one bool per class (True = novel / unseen in training);
- ``ann_file_path``: absolute path of the ground-truth json (for AP evaluation);
- samples' ``meta["neg_class_ids"]``: an LVIS image's ``neg_category_ids`` as class ids (None
  for COCO): with the classes of its annotations, the classes the LVIS evaluation scores there;
- ``synonym_lists``: with ``dataset.class_names_file``, one list of prompt names per class
  (what the text embeddings are built from, :func:`read_class_names_file`); None otherwise (the
  names are split into synonyms by :func:`synonyms`). Samples carry it as ``meta["synonym_lists"]``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from sambench import tasks
from sambench.data.base import SambenchDataset
from sambench.data.coco_format import bbox_problem, instance_tensors, read_coco_image, segmentation_problem
from sambench.data.meta import DatasetMeta
from sambench.errors import ConfigError, DatasetError
from sambench.structures import Sample

logger = logging.getLogger(__name__)

#: COCO category ids of the 48 base classes of the open-vocabulary split (OVR-CNN / OV-SAM).
COCO_BASE_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 7, 8, 9, 15, 16, 19, 20, 23, 24, 25, 27, 31, 33, 34, 35, 38, 42, 44, 48, 50,
    51, 52, 53, 54, 55, 56, 57, 59, 60, 62, 65, 70, 72, 73, 74, 75, 78, 79, 80, 82, 84, 85, 86, 90,
)
#: COCO category ids of the 17 novel classes.
COCO_NOVEL_IDS: tuple[int, ...] = (5, 6, 17, 18, 21, 22, 28, 32, 36, 41, 47, 49, 61, 63, 76, 81, 87)


def negative_class_ids(image_info: dict[str, Any], category_index: dict[int, int]) -> list[int] | None:
    """An LVIS image's ``neg_category_ids`` as class ids (categories outside the vocabulary are
    left out); None for images without the field (COCO: exhaustively annotated)."""
    negatives = image_info.get("neg_category_ids")
    if not isinstance(negatives, list):
        return None
    return sorted(category_index[cat] for cat in negatives if cat in category_index)


def synonyms(name: str) -> list[str]:
    """Synonyms of a class name: ``_or_`` and ``/`` separate synonyms as ``,`` does, ``_`` is a
    space, lower-cased, stripped, empties dropped (``'couch,sofa,sofas'`` -> three names,
    ``'car_(automobile)'`` -> ``['car (automobile)']``)."""
    text = name.replace("_or_", ",").replace("/", ",").replace("_", " ").lower()
    return [part.strip() for part in text.split(",") if part.strip()]


def read_class_names_file(path: str | Path, categories: list[dict[str, Any]], ann_path: Path) -> dict[int, list[str]]:
    """A class-names file -> {category id: synonyms}, checked strictly against the annotation
    file's ``categories``.

    The file is a JSON object mapping a category (its id as a string, e.g. ``"1"``, or its exact
    ``name``) to a non-empty list of non-empty strings, the class's synonyms, used verbatim (one
    text prompt per synonym and template); optionally nested as ``{"classes": {...}}`` beside
    other keys (e.g. ``"source"``). Every key must name one category of ``ann_path``, and no
    category may be named twice; categories the file leaves out are reported by the caller.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"dataset.class_names_file: file not found: {file} (a JSON object: category id or name -> "
                          "list of synonyms; tools/make_class_names.py writes the official ones)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read class-names file {file}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("classes"), dict):
        data = data["classes"]
    if not isinstance(data, dict) or not data:
        raise DatasetError(f"class-names file {file}: expected a non-empty JSON object (category id or name -> list "
                           f"of synonyms), got {type(data).__name__}")
    by_id = {str(c["id"]): c["id"] for c in categories}
    by_name = {str(c["name"]): c["id"] for c in categories}
    out: dict[int, list[str]] = {}
    for key, value in data.items():
        cat_id = by_id.get(key, by_name.get(key))
        if cat_id is None:
            raise DatasetError(f"class-names file {file}: entry {key!r} is neither a category id nor a category name "
                               f"of {ann_path}")
        if cat_id in out:
            raise DatasetError(f"class-names file {file}: category {cat_id} ({_category_name(categories, cat_id)!r}) is "
                               f"named twice (entry {key!r})")
        if not isinstance(value, list) or not value or \
                not all(isinstance(name, str) and name.strip() for name in value):
            raise DatasetError(f"class-names file {file}: entry {key!r} must be a non-empty list of non-empty "
                               f"strings, got {value!r}"[:300])
        out[cat_id] = [name.strip() for name in value]
    return out


def _category_name(categories: list[dict[str, Any]], cat_id: int) -> str:
    """The name of category ``cat_id``."""
    return next(str(c["name"]) for c in categories if c["id"] == cat_id)


class OpenVocabInstanceDataset(SambenchDataset):
    """One :class:`Sample` per image keeping at least one instance of the split's vocabulary.

    Subclasses call :meth:`_build` from ``__init__`` and implement :meth:`image_path`.
    """

    TASKS = (tasks.OPEN_VOCAB_INSTANCE,)
    NAME = "open_vocab"
    #: the API that scores the ground-truth file (mask AP): "coco" (pycocotools) or "lvis".
    ANNOTATION_FORMAT = "coco"

    def _check_common(self, split: str, max_images: int | None) -> None:
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset '{self.NAME}': split must be 'train' or 'eval', got '{split}'")
        if max_images is not None and max_images < 1:
            raise ConfigError(f"dataset.max_images must be >= 1 or null, got {max_images}")

    def _build(
        self,
        data: dict[str, Any],
        ann_path: Path,
        keep_ids: Iterable[int],
        novel_ids: Iterable[int],
        *,
        include_crowd: bool,
        min_area: float,
        max_images: int | None,
        class_names_file: str | None = None,
    ) -> None:
        """Index ``data`` keeping annotations of the categories ``keep_ids`` (sorted into the
        contiguous vocabulary); ``novel_ids`` are flagged novel; ``class_names_file`` gives the
        classes' synonyms (:func:`read_class_names_file`)."""
        self.ann_path = ann_path
        names = {}
        for category in data["categories"]:
            if not isinstance(category, dict) or "id" not in category or "name" not in category:
                raise DatasetError(f"annotation file {ann_path}: every category needs an 'id' and a 'name'")
            if category["id"] in names:
                raise DatasetError(f"annotation file {ann_path}: category id {category['id']} appears twice")
            names[category["id"]] = category
        keep = sorted(set(keep_ids))
        missing = [cat_id for cat_id in keep if cat_id not in names]
        if missing:
            raise DatasetError(
                f"annotation file {ann_path} lacks category id(s) {missing[:10]} that dataset '{self.NAME}' needs"
            )
        novel = set(novel_ids)
        self.category_ids: list[int] = keep
        self.category_index = {cat_id: index for index, cat_id in enumerate(keep)}
        self.class_names: list[str] = [str(names[cat_id]["name"]) for cat_id in keep]
        self.novel: list[bool] = [cat_id in novel for cat_id in keep]
        self.categories: list[dict[str, Any]] = [names[cat_id] for cat_id in keep]
        self.synonym_lists: list[list[str]] | None = None
        if class_names_file:
            listed = read_class_names_file(class_names_file, list(names.values()), ann_path)
            missing = [f"{cat_id} ({names[cat_id]['name']})" for cat_id in keep if cat_id not in listed]
            if missing:
                raise DatasetError(f"class-names file {Path(class_names_file).expanduser()} lacks {len(missing)} "
                                   f"class(es) of dataset '{self.NAME}': {', '.join(missing[:5])}")
            self.synonym_lists = [listed[cat_id] for cat_id in keep]
        self.include_crowd = include_crowd
        self.min_area = float(min_area)
        self.num_invalid_annotations = 0
        first_problem = ""
        kept: dict[Any, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise DatasetError(f"annotation file {ann_path}: every annotation needs an 'image_id'")
            if ann.get("category_id") not in names:
                raise DatasetError(
                    f"annotation file {ann_path}: annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}"
                )
            if ann["category_id"] not in self.category_index:
                continue
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            if float(ann.get("area", 0.0)) < self.min_area:
                continue
            problem = segmentation_problem(ann.get("segmentation")) or bbox_problem(ann.get("bbox"))
            if problem:
                if not self.num_invalid_annotations:
                    first_problem = f"annotation {ann.get('id')}: {problem}"
                self.num_invalid_annotations += 1
                continue
            kept.setdefault(ann["image_id"], []).append(ann)
        if self.num_invalid_annotations:
            logger.warning(
                "%s: skipped %d annotation(s) with an invalid segmentation or bbox (first: %s)",
                ann_path, self.num_invalid_annotations, first_problem,
            )
        for image in data["images"]:
            if not isinstance(image, dict) or "id" not in image:
                raise DatasetError(f"annotation file {ann_path}: every image needs an 'id'")
        images = sorted((image for image in data["images"] if image["id"] in kept), key=lambda image: image["id"])
        if max_images is not None:
            images = images[:max_images]
        self.entries: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [(image, kept[image["id"]]) for image in images]

    @property
    def ann_file_path(self) -> str:
        """Absolute path of the ground-truth json."""
        return str(self.ann_path)

    @property
    def dataset_meta(self) -> DatasetMeta:
        """Vocabulary, novel flags, category ids and the ground-truth file with its format."""
        return DatasetMeta(
            class_names=tuple(self.class_names), novel=tuple(self.novel), annotation_format=self.ANNOTATION_FORMAT,
            category_ids=tuple(self.category_ids), ann_file=self.ann_file_path,
        )

    def image_path(self, image_info: dict[str, Any]) -> tuple[Path, str]:  # pragma: no cover - abstract
        """(absolute image path, relative name used for ``file_name`` / ``prediction_path``)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        image_info, anns = self.entries[index]
        path, relative = self.image_path(image_info)
        image = read_coco_image(path, image_info)  # EXIF by size, as the other COCO adapters
        size = (int(image.shape[0]), int(image.shape[1]))
        return Sample(
            index=index,
            image=image,
            **instance_tensors(anns, image_info, path, size, self.ann_path, self.category_index),
            class_names=self.class_names,
            meta={
                "image_id": image_info["id"],
                "file_name": relative,
                "ann_ids": [ann.get("id") for ann in anns],
                "prediction_path": str(Path(relative).with_suffix("")),
                "novel": self.novel,  # one bool per class id (the open-vocabulary ensemble needs it)
                "synonym_lists": self.synonym_lists,  # None = split the class names (dataset.class_names_file)
                # LVIS: the classes verified absent from this image (class ids); None = not a federated dataset
                "neg_class_ids": negative_class_ids(image_info, self.category_index),
            },
        )
