"""RefCOCO, RefCOCO+ and RefCOCOg (referring expression segmentation) in the refer API layout.

Layout (lichengunc/refer ``data/`` + COCO train2014 images)::

    <root>/<dataset>/instances.json           # COCO instances over train2014 images (polygons)
    <root>/<dataset>/refs(<split_by>).p       # pickled list of refs (or refs(<split_by>).json)
    <root>/images/mscoco/images/train2014/COCO_train2014_%012d.jpg

The training split gives one sample per referred object with all its sentences (the method
draws one per step); an evaluation split gives one sample per sentence. The image is the
*annotation's* image from ``instances.json``; the ref's own ``file_name`` is ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sambench import tasks
from sambench.data.base import SambenchDataset, inside_root, resolve_root
from sambench.data.coco_format import contiguous_categories, instance_tensors, load_coco_json, read_coco_image
from sambench.data.refer_json import REFER_SPLITS, load_refs, refs_file, select_refs
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, closest, register_preset
from sambench.structures import Sample

logger = logging.getLogger(__name__)

DOWNLOAD = (
    "download <dataset>.zip from the lichengunc/refer README (bvisionweb1.cs.unc.edu/licheng/referit/data/) "
    "and unzip it into the root; COCO train2014 images go to <root>/images/mscoco/images/train2014/"
)
ROOT_HINT = "the refer data root holding <dataset>/instances.json, <dataset>/refs(<split_by>).p and images/"
REFS_FORMATS = ("auto", "pickle", "json")
TEXT_FIELDS = ("sent", "raw")
#: The registered name of each refer folder (``refcocop``, ``refcocog``: presets of ``refcoco``).
REGISTRY_NAMES = {"refcoco": "refcoco", "refcoco+": "refcocop", "refcocog": "refcocog"}


def _suggest(value: str, valid: tuple[str, ...]) -> str:
    """`` (did you mean 'x'?)``, preferring a case-insensitive match (``testa`` -> ``testA``)."""
    same = [v for v in valid if v.lower() == str(value).lower()]
    return f" (did you mean '{same[0]}'?)" if same else closest(str(value), valid)


def _check_choice(value: str, valid: tuple[str, ...], option: str) -> None:
    if value not in valid:
        raise ConfigError(f"dataset.{option} must be one of {', '.join(valid)}, got '{value}'{_suggest(value, valid)}")


@DATASETS.register_module(name="refcoco")
class RefCocoDataset(SambenchDataset):
    """RefCOCO (unc splits by default): referring expressions over COCO train2014 objects.

    Each sample holds ``image`` (H×W×3 uint8), ``masks`` (1×H×W bool, the referred object),
    ``boxes`` (1×4 float32 xyxy), ``class_ids`` (1 int64, contiguous category index),
    ``texts`` and ``meta`` (``ref_id``, ``ann_id``, ``image_id``, ``file_name``, ``sent_ids``;
    evaluation samples add ``sent_id`` and ``prediction_path`` = ``str(sent_id)``).
    ``texts`` is every sentence of the ref in training, exactly one sentence in evaluation.

    Args:
        split: "train" (reads ``train_split``) or "eval" (reads ``eval_split``).
        root: the refer data root (see the module docstring for the layout).
        dataset: folder under ``root`` (refcoco / refcoco+ / refcocog; the presets ``refcocop``
            and ``refcocog`` change the default and ``split_by``'s).
        split_by: refs flavour, ``refs(<split_by>).p``.
        train_split / eval_split: refer split names (valid ones depend on dataset/split_by).
        image_dir: COCO train2014 folder, relative to ``root``.
        refs_format: "auto" (``refs(<split_by>).json`` if present, else the pickle), "pickle"
            or "json".
        text_field: "sent" (normalised lower-case sentence) or "raw" (the annotator's text).
        max_samples: keep only the first N samples (for quick runs); None = all.
    """

    TASKS = (tasks.REFERRING,)
    NAME = "refcoco"

    def __init__(
        self,
        *,
        split: str,
        root: str,
        dataset: str = "refcoco",
        split_by: str = "unc",
        train_split: str = "train",
        eval_split: str = "val",
        image_dir: str = "images/mscoco/images/train2014",
        refs_format: str = "auto",
        text_field: str = "sent",
        max_samples: int | None = None,
    ):
        self.NAME = REGISTRY_NAMES.get(dataset, self.NAME)  # the name in messages
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset '{self.NAME}': split must be 'train' or 'eval', got '{split}'")
        self.dataset = dataset
        self.split_by = split_by
        valid = REFER_SPLITS.get((self.dataset, self.split_by))
        if valid is None:
            combos = ", ".join(f"{d}/{s}" for d, s in REFER_SPLITS)
            raise ConfigError(
                f"dataset '{self.NAME}': unknown dataset/split_by '{self.dataset}/{self.split_by}'; valid: {combos}"
            )
        option = "train_split" if split == "train" else "eval_split"
        self.refer_split = train_split if split == "train" else eval_split
        if self.refer_split not in valid:
            raise ConfigError(
                f"dataset.{option} '{self.refer_split}' is not a split of {self.dataset}/{self.split_by}"
                f"{_suggest(self.refer_split, valid)}; valid: {', '.join(valid)}"
            )
        _check_choice(refs_format, REFS_FORMATS, "refs_format")
        _check_choice(text_field, TEXT_FIELDS, "text_field")
        if max_samples is not None and max_samples < 1:
            raise ConfigError(f"dataset.max_samples must be >= 1 or null, got {max_samples}")
        self.split = split
        self.text_field = text_field
        download = DOWNLOAD.replace("<dataset>", self.dataset)
        self.root = resolve_root(root, self.NAME, f"{ROOT_HINT}; {download}")
        self.folder = inside_root(self.root, self.dataset)
        self.refs_path = self._refs_path(refs_format, download)
        self.ann_path = self.folder / "instances.json"
        if not self.ann_path.is_file():
            raise DatasetError(f"annotation file not found: {self.ann_path} ({download})")
        self.image_folder = inside_root(self.root, image_dir)
        if not self.image_folder.is_dir():
            raise DatasetError(f"image folder not found: {self.image_folder} (set dataset.image_dir; {download})")
        refs = select_refs(load_refs(self.refs_path), self.refer_split)
        if not refs:
            raise DatasetError(f"refs file {self.refs_path} has no ref in split '{self.refer_split}'")
        skipped: dict = {}
        data = load_coco_json(self.ann_path, skipped=skipped)
        self.category_index, self.class_names = contiguous_categories(data["categories"], self.ann_path)
        self.refs = refs
        self.anns, self.images = self._index(refs, data, skipped)
        if split == "train":
            self.entries: list[tuple[int, int | None]] = [(i, None) for i in range(len(refs))]
        else:
            self.entries = [(i, j) for i, ref in enumerate(refs) for j in range(len(ref["sentences"]))]
        if max_samples is not None:
            self.entries = self.entries[:max_samples]
        logger.info(
            "%s/%s %s (%s split): %d refs, %d sentences, %d images, %d samples", self.dataset, self.split_by,
            self.refer_split, split, len(refs), sum(len(r["sentences"]) for r in refs), len(self.images), len(self),
        )

    def _refs_path(self, refs_format: str, download: str) -> Path:
        """The refs file to read, by ``refs_format``; a DatasetError says where it should be."""
        pickle_path = refs_file(self.folder, self.split_by, ".p")
        json_path = refs_file(self.folder, self.split_by, ".json")
        if refs_format == "json" or (refs_format == "auto" and json_path.is_file()):
            path = json_path
        else:
            path = pickle_path
        if not path.is_file():
            extra = f" or {json_path.name}" if refs_format == "auto" else ""
            raise DatasetError(
                f"refs file not found: {path}{extra} (expected the refer API layout: {ROOT_HINT}; {download})"
            )
        return path

    def _index(self, refs: list[dict[str, Any]], data: dict[str, Any], skipped: dict) -> tuple[dict, dict]:
        """The annotations and images the refs use, checked now (ids, segmentations, paths)."""
        anns = {ann.get("id"): ann for ann in data["annotations"]}
        images = {img["id"]: img for img in data["images"]}
        used_anns: dict[int, dict[str, Any]] = {}
        used_images: dict[int, dict[str, Any]] = {}
        for ref in refs:
            ann = anns.get(ref["ann_id"])
            if ann is None and ref["ann_id"] in skipped:
                raise DatasetError(
                    f"annotation {ref['ann_id']} in {self.ann_path} (ref {ref['ref_id']} of {self.refs_path.name}) "
                    f"cannot be used: {skipped[ref['ann_id']][1]}"
                )
            if ann is None:
                raise DatasetError(
                    f"ref {ref['ref_id']} in {self.refs_path} names ann_id {ref['ann_id']}, which {self.ann_path} "
                    f"lacks (are both files from the same {self.dataset} download?)"
                )
            image = images.get(ann["image_id"])  # annotations were validated by load_coco_json
            if image is None:
                raise DatasetError(
                    f"ref {ref['ref_id']} in {self.refs_path}: its annotation {ann['id']} names image_id "
                    f"{ann.get('image_id')}, which {self.ann_path} lacks"
                )
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                raise DatasetError(f"annotation file {self.ann_path}: image {image['id']} has no 'file_name'")
            inside_root(self.image_folder, image["file_name"])  # refuses '..' and absolute names now
            used_anns[ann["id"]] = ann
            used_images[image["id"]] = image
        return used_anns, used_images

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        ref_index, sentence_index = self.entries[index]
        ref = self.refs[ref_index]
        ann = self.anns[ref["ann_id"]]
        image_info = self.images[ann["image_id"]]
        path = inside_root(self.image_folder, image_info["file_name"])
        image = read_coco_image(path, image_info)
        size = (int(image.shape[0]), int(image.shape[1]))
        sentences = ref["sentences"]
        if sentence_index is not None:
            sentences = [sentences[sentence_index]]
        meta = {
            "ref_id": ref["ref_id"],
            "ann_id": ann["id"],
            "image_id": image_info["id"],
            "file_name": image_info["file_name"],
            "sent_ids": [s["sent_id"] for s in ref["sentences"]],
        }
        if sentence_index is not None:
            meta["sent_id"] = sentences[0]["sent_id"]
            meta["prediction_path"] = str(sentences[0]["sent_id"])
        return Sample(
            index=index,
            image=image,
            **instance_tensors([ann], image_info, path, size, self.ann_path, self.category_index),
            class_names=self.class_names,
            texts=[s[self.text_field] for s in sentences],
            meta=meta,
        )


register_preset(DATASETS, "refcocop", RefCocoDataset, defaults=dict(dataset="refcoco+", split_by="unc"),
                doc="RefCOCO+ (folder ``refcoco+``, unc splits train/val/testA/testB; no location words).")
register_preset(DATASETS, "refcocog", RefCocoDataset, defaults=dict(dataset="refcocog", split_by="umd"),
                doc="RefCOCOg (folder ``refcocog``, umd splits train/val/test; longer expressions).")
