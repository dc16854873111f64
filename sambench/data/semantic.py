"""Shared pieces of the semantic segmentation adapters.

Label maps are returned as H×W int64 tensors with classes ``0..C-1`` and ``255`` = ignore.
Each adapter lists ``(image, label, prediction_path, meta)`` entries for a split and converts
the raw label PNG into that form (Cityscapes labelId -> trainId look-up, ADE20K / PASCAL-Context
``reduce_zero_label``, Mapillary name mapping, or nothing when the files already hold
trainIds).

An adapter builds the whole split; the few-shot protocol (SSPrompt) is a wrapper the composition
root puts around the training split (:class:`~sambench.data.few_shot.FewShotSubset`). The draw
needs which classes each image holds, so every training label map is read once: that *presence
index* (:meth:`SemanticSegmentationDataset.class_presence`) is cached as JSON under
``$SAMBENCH_CACHE_DIR/semantic_index/`` (default ``~/.cache/sambench``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sambench import tasks
from sambench.data.base import (
    SambenchDataset,
    check_int,
    inside_root,
    read_image_for,
    read_label_png,
    resolve_root,
    walk_files,
)
from sambench import dist
from sambench.data.meta import DatasetMeta
from sambench.errors import ConfigError, DatasetError
from sambench.files import write_json_atomic
from sambench.logging.console import progress
from sambench.registry import closest
from sambench.structures import Sample

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
#: Version of the presence-index file format (a change makes old cache files recompute).
INDEX_VERSION = 1
#: Threads reading label maps while the presence index is built (PNG decoding releases the GIL).
SCAN_THREADS = 8

#: The 19 Cityscapes evaluation classes in trainId order (cityscapesScripts labels.py).
CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
]
#: labelId of each trainId 0..18; every other labelId (void, parking, rail track, guard rail,
#: bridge, tunnel, polegroup, caravan, trailer, license plate) is not evaluated (trainId 255).
CITYSCAPES_TRAIN_LABEL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]


def make_lut(mapping: dict[int, int]) -> np.ndarray:
    """A 256-entry uint8 look-up table: ``mapping`` where given, 255 everywhere else."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for source, target in mapping.items():
        lut[source] = target
    return lut


#: Cityscapes labelId -> trainId (uint8, 256 entries; everything but the 19 classes -> 255).
LABEL_ID_TO_TRAIN_ID = make_lut({label_id: train_id for train_id, label_id in enumerate(CITYSCAPES_TRAIN_LABEL_IDS)})
#: mmseg's reduce_zero_label: 0 -> 255, v -> v - 1 for 1..254, 255 stays 255.
REDUCE_ZERO_LUT = make_lut({value: value - 1 for value in range(1, 255)})


def apply_lut(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[labels]`` for a label map with values 0..255 (any integer dtype); uint8 out."""
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"label values must lie in 0..255 for a look-up table, got {labels.min()}..{labels.max()}")
        labels = labels.astype(np.uint8)
    return lut[labels]


def reduce_zero_label(labels: np.ndarray) -> np.ndarray:
    """``0..N`` -> ``255, 0..N-1``: label 0 becomes ignore, every other label moves down by one
    and 255 stays 255 (mmseg: 0 -> 255, minus one, 254 -> 255), as for ADE20K and PASCAL-Context-59."""
    return apply_lut(labels, REDUCE_ZERO_LUT)


# --------------------------------------------------------------------------- presence index


def index_cache_dir() -> Path:
    """``$SAMBENCH_CACHE_DIR/semantic_index`` (default ``~/.cache/sambench/semantic_index``)."""
    base = os.environ.get("SAMBENCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sambench")
    return Path(base).expanduser() / "semantic_index"


# --------------------------------------------------------------------------- file listing


@dataclass(frozen=True)
class SemanticEntry:
    """One image of a split.

    Attributes:
        image: absolute image path (inside the dataset root).
        label: absolute label PNG path (inside the dataset root).
        prediction_path: relative stem where a prediction for the image is written.
        meta: extra sample meta of the adapter (e.g. ``{"condition": "fog"}``).
    """

    image: Path
    label: Path
    prediction_path: str
    meta: dict[str, Any] = field(default_factory=dict)


def scan_files(folder: Path, suffix: str) -> list[Path]:
    """Files under ``folder`` (recursively) whose name ends with ``suffix``, sorted; symlinked
    folders are followed, each real folder once (:func:`~sambench.data.base.walk_files`)."""
    return walk_files(folder, lambda name: name.endswith(suffix))


def pair_files(
    root: Path,
    image_dir: str,
    image_suffix: str,
    label_dir: str,
    label_suffix: str,
    *,
    hint: str = "",
    prediction_prefix: str = "",
    meta: dict[str, Any] | None = None,
) -> list[SemanticEntry]:
    """Pair every ``<image_dir>/**/<stem><image_suffix>`` with ``<label_dir>/**/<stem><label_suffix>``.

    A missing folder, an empty folder or an image without a label map raises a DatasetError
    naming the folder scanned and the pattern expected (``hint`` is appended to the message).
    """
    image_folder = inside_root(root, image_dir)
    label_folder = inside_root(root, label_dir)
    extra = f"; {hint}" if hint else ""
    if not image_folder.is_dir():
        raise DatasetError(f"image folder not found: {image_folder} (expected {image_dir}/**/*{image_suffix}{extra})")
    images = scan_files(image_folder, image_suffix)
    if not images:
        raise DatasetError(
            f"no images in {image_folder}: scanned it recursively for '*{image_suffix}' and found none{extra}"
        )
    entries = []
    for image in images:
        stem = image.relative_to(image_folder).as_posix()[: -len(image_suffix)]
        label = label_folder / f"{stem}{label_suffix}"
        if not label.is_file():
            raise DatasetError(
                f"label map not found: {label} (expected one for image {image}: {label_dir}/**/*{label_suffix}{extra})"
            )
        entries.append(SemanticEntry(image, label, f"{prediction_prefix}{stem}", dict(meta or {})))
    return entries


def check_choice(dataset: str, option: str, value: Any, valid: tuple[str, ...]) -> None:
    """ConfigError listing the valid values when ``value`` is not one of them."""
    if value not in valid:
        raise ConfigError(
            f"dataset '{dataset}': {option} must be one of {', '.join(valid)}, got '{value}'"
            f"{closest(str(value), valid)}"
        )


# --------------------------------------------------------------------------- base dataset


class SemanticSegmentationDataset(SambenchDataset):
    """Base of the semantic segmentation adapters (task ``semantic_few_shot``).

    A subclass sets ``NAME``, ``ROOT_HINT``, ``CLASS_NAMES`` (or ``class_names`` in
    :meth:`prepare`) and ``SPLIT_NAMES`` and implements :meth:`list_entries`; it may override
    :meth:`locate_root` (accept several root levels), :meth:`prepare` (read files that depend on
    the root), :meth:`convert_labels` (raw PNG indices -> ``0..C-1`` / 255) and
    :meth:`label_signature` (anything the conversion depends on, for the presence cache).

    Each :class:`~sambench.structures.Sample` holds ``image`` (H×W×3 uint8 RGB), ``semantic``
    (H×W int64, 255 = ignore), ``class_names`` and ``meta`` with ``file_name`` (the image path
    relative to the root), ``prediction_path`` (relative stem) and the adapter's extra keys.

    The whole split is listed; the few-shot subset of training is
    :class:`~sambench.data.few_shot.FewShotSubset` around it (it reads :meth:`class_presence`
    and :meth:`file_name`).

    Args:
        split: "train" (reads ``train_split``) or "eval" (reads ``eval_split``).
        root: the dataset folder (see the adapter for its layout).
        train_split / eval_split: the dataset's own split folder/list names (``train``, ``val``,
            ``training``...); None = ``SPLIT_NAMES``.
        max_samples: keep only the first N samples; None = all.
    """

    TASKS = (tasks.SEMANTIC_FEW_SHOT,)
    NAME = "semantic"
    ROOT_HINT = "a semantic segmentation dataset folder"
    #: the vocabulary, label index order (an adapter may read it from the dataset in :meth:`prepare`)
    CLASS_NAMES: tuple[str, ...] = ()
    #: the dataset's own (training, evaluation) split names: the defaults of train_split / eval_split
    SPLIT_NAMES: tuple[str, str] = ("train", "val")

    def __init__(
        self,
        *,
        split: str,
        root: str,
        train_split: str | None = None,
        eval_split: str | None = None,
        max_samples: int | None = None,
    ):
        split_name = train_split if split == "train" else eval_split
        if split_name is None:
            split_name = self.SPLIT_NAMES[0 if split == "train" else 1]
        self.class_names = list(self.CLASS_NAMES)
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset '{self.NAME}': split must be 'train' or 'eval', got '{split}'")
        check_int(self.NAME, "max_samples", max_samples, 1, allow_none=True)
        if not isinstance(split_name, str) or not split_name:
            raise ConfigError(f"dataset '{self.NAME}': the split name must be a non-empty string, got {split_name!r}")
        self.split = split
        self.split_name = split_name
        self.root = self.locate_root(resolve_root(root, self.NAME, self.ROOT_HINT))
        self.prepare()
        self.class_names = list(self.class_names)
        entries = self.list_entries(split_name)
        if not entries:
            raise DatasetError(
                f"dataset '{self.NAME}': split '{split_name}' under {self.root} has no images ({self.ROOT_HINT})"
            )
        self.split_size = len(entries)
        logger.info(
            "%s %s (%s split): %d images, %d classes", self.NAME, split_name, split, len(entries),
            len(self.class_names),
        )
        if max_samples is not None:
            entries = entries[:max_samples]
        self.entries: list[SemanticEntry] = entries

    @property
    def dataset_meta(self) -> DatasetMeta:
        """The classes and the ignore label (255) of the label maps."""
        return DatasetMeta(class_names=tuple(self.class_names), ignore_index=IGNORE_INDEX)

    # ---- hooks for subclasses

    def locate_root(self, root: Path) -> Path:
        """The folder the layout starts at (e.g. ``root/ADEChallengeData2016`` when given its parent)."""
        return root

    def prepare(self) -> None:
        """Read root-dependent metadata (class names, mappings) before the files are listed."""

    def list_entries(self, split_name: str) -> list[SemanticEntry]:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert_labels(self, labels: np.ndarray) -> np.ndarray:
        """Raw PNG indices (uint8) -> ``0..C-1`` / 255; the files already hold train ids by default."""
        return labels

    def label_signature(self) -> str:
        """What :meth:`convert_labels` depends on besides the files (part of the presence-cache key)."""
        return ""

    # ---- labels

    def load_labels(self, entry: SemanticEntry) -> np.ndarray:
        """The converted H×W uint8 label map of an entry, values checked against the classes."""
        raw = read_label_png(entry.label)
        if raw.dtype != np.uint8:
            if raw.size and (raw.min() < 0 or raw.max() > 255):
                raise DatasetError(
                    f"label map {entry.label} holds values {raw.min()}..{raw.max()}; expected class indices 0..255 "
                    f"(a {raw.dtype.itemsize * 8}-bit label map is read when its values fit; is it an instance-id map?)"
                )
            raw = raw.astype(np.uint8)
        labels = self.convert_labels(raw)
        counts = np.bincount(labels.ravel(), minlength=256)
        bad = [v for v in np.flatnonzero(counts[len(self.class_names):]) + len(self.class_names) if v != IGNORE_INDEX]
        if bad:
            raise DatasetError(
                f"label map {entry.label} holds {'converted ' if self.label_signature() else ''}values "
                f"{', '.join(str(int(v)) for v in bad[:8])} outside 0..{len(self.class_names) - 1} and {IGNORE_INDEX} "
                f"(expected {self.NAME} class indices; is it the right label file?)"
            )
        return labels

    def _presence_of(self, entry: SemanticEntry) -> list[int]:
        counts = np.bincount(self.load_labels(entry).ravel(), minlength=256)[: len(self.class_names)]
        return [int(c) for c in np.flatnonzero(counts)]

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def file_name(self, index: int) -> str:
        """Sample ``index``'s image path relative to the root (``meta["file_name"]``)."""
        return self.relative(self.entries[index].image)

    def class_presence(self) -> list[set[int]]:
        """Classes held by each sample's label map, read once and cached (see the module docstring)."""
        entries = self.entries
        labels = [self.relative(e.label) for e in entries]
        key = hashlib.sha1()
        head = [str(self.root), self.split_name, self.label_signature(), len(self.class_names)]
        key.update(json.dumps(head).encode())
        for entry, name in zip(entries, labels):
            stat = entry.label.stat()
            key.update(f"\n{name}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        cache_file = index_cache_dir() / f"{self.NAME}-{key.hexdigest()}.json"
        cached = self._read_presence(cache_file, labels)
        if cached is not None:
            return cached
        workers = max(1, min(SCAN_THREADS, os.cpu_count() or 1))
        desc = f"{self.NAME} {self.split_name}: class presence"
        with ThreadPoolExecutor(max_workers=workers) as pool:
            scan = pool.map(self._presence_of, entries)
            presence = list(progress(scan, total=len(entries), desc=desc, rank=dist.rank()))
        data = {
            "version": INDEX_VERSION, "dataset": self.NAME, "root": str(self.root), "split": self.split_name,
            "num_classes": len(self.class_names), "labels": labels, "presence": presence,
        }
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cache_file, data, indent=None)
        except OSError as exc:
            logger.warning(
                "could not write the class-presence cache %s (%s); it is recomputed next time", cache_file, exc
            )
        return [set(p) for p in presence]

    def _read_presence(self, cache_file: Path, labels: list[str]) -> list[set[int]] | None:
        """The cached presence index, or None when absent or unusable (then it is recomputed)."""
        if not cache_file.is_file():
            return None
        try:
            data = json.loads(cache_file.read_text(encoding="utf-8"))
            presence = data["presence"]
            valid = (
                data.get("version") == INDEX_VERSION
                and data.get("labels") == labels
                and isinstance(presence, list)
                and len(presence) == len(labels)
                and all(
                    isinstance(p, list) and all(type(c) is int and 0 <= c < len(self.class_names) for c in p)
                    for p in presence
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            logger.warning("class-presence cache %s is unreadable or stale; recomputing it", cache_file)
            return None
        logger.info("%s %s: class presence read from the cache %s", self.NAME, self.split_name, cache_file)
        return [set(p) for p in presence]

    # ---- samples

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Sample:
        entry = self.entries[index]
        labels = self.load_labels(entry)
        image = read_image_for(entry.image, entry.label, labels, what="label map")
        return Sample(
            index=index,
            image=image,
            semantic=torch.from_numpy(labels.astype(np.int64)),
            class_names=self.class_names,
            meta={"file_name": self.relative(entry.image), "prediction_path": entry.prediction_path, **entry.meta},
        )
