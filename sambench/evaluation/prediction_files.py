"""Prediction files (``save_predictions=true``): one writer per output kind, and the task's
:class:`PredictionWriter` that chains them.

Every file goes to ``<folder>/<prediction path>`` (:func:`prediction_path`), written atomically:

- :func:`write_instance_ids`: instance masks -> an id PNG (0 = background, i + 1 = mask i);
- :func:`write_semantic_labels`: a semantic prediction -> a class-index PNG (contiguous ids);
- :func:`write_logits`: ``Prediction.logits`` -> a float32 ``.npy`` beside the PNG;
- :func:`write_instance_masks`: one 0/255 PNG per instance (``Prediction.instance_names``) and
  a labels fragment that :func:`merge_label_files` joins into ``labels.json`` after evaluation.

PNGs are uint8, or uint16 when an id exceeds 255. Overlays (``save_overlays``) are not
predictions: :func:`write_overlay` draws them for every task.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sambench.files import write_json_atomic, write_npy_atomic
from sambench.structures import Prediction, Sample
from sambench.vis import instance_id_map, overlay_masks, save_png_atomic

IGNORE = 255

#: ``writer(sample, prediction, folder)``: writes one kind of file for one prediction.
FileWriter = Callable[[Sample, Prediction, Path], None]


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part).lstrip(".") or "_"


def sample_name(sample: Sample) -> str:
    """A file-name-safe name for a sample (meta name, file stem or index)."""
    meta = sample.meta
    name = meta.get("name") or (Path(meta["file_name"]).stem if "file_name" in meta else f"{sample.index:06d}")
    return _safe(str(name))


def prediction_path(sample: Sample) -> Path:
    """Where a sample's prediction goes, relative to ``predictions/``: the dataset's
    ``meta["prediction_path"]`` (e.g. ``cat/01``; sanitised, no escaping) or its name."""
    if "prediction_path" in sample.meta:
        return Path(*[_safe(part) for part in str(sample.meta["prediction_path"]).split("/") if part])
    return Path(sample_name(sample))


def class_masks(semantic: torch.Tensor) -> np.ndarray:
    """H×W class indices -> (max class + 1)×H×W bool masks, mask c = class c (so an overlay
    colours each class consistently); ignore (255) is left uncovered."""
    labels = semantic.cpu().numpy()
    valid = labels[labels != IGNORE]
    count = int(valid.max()) + 1 if valid.size else 0
    return labels[None] == np.arange(count).reshape(-1, 1, 1)


def _save_ids(path: Path, ids: np.ndarray) -> None:
    save_png_atomic(path, ids.astype("uint16" if ids.max() > 255 else "uint8"))


def write_instance_ids(sample: Sample, pred: Prediction, folder: Path) -> None:
    """``<path>.png``: the N×H×W masks as one id map (0 = background, i + 1 = mask i)."""
    _save_ids(folder / prediction_path(sample).with_suffix(".png"), instance_id_map(pred.masks.cpu().numpy()))


def write_semantic_labels(sample: Sample, pred: Prediction, folder: Path) -> None:
    """``<path>.png``: the H×W predicted class indices (the dataset's contiguous ids)."""
    _save_ids(folder / prediction_path(sample).with_suffix(".png"), pred.semantic.cpu().numpy())


def write_logits(sample: Sample, pred: Prediction, folder: Path) -> None:
    """``<path>.npy``: ``pred.logits`` as float32 (e.g. DIT's 512×512 logits before the
    threshold); nothing when the prediction has none."""
    if isinstance(pred.logits, torch.Tensor):
        write_npy_atomic(folder / prediction_path(sample).with_suffix(".npy"), pred.logits.detach().float().cpu().numpy())


def write_instance_masks(sample: Sample, pred: Prediction, folder: Path) -> None:
    """One binary PNG (0 / 255) per instance, ``<folder>/<name>.png`` for the names in
    ``pred.instance_names``, and their labels (``pred.instance_labels``: one dict each) in a
    fragment ``<folder>/labels/<first name>.json`` that :func:`merge_label_files` joins; nothing
    when the prediction has no instance names."""
    if pred.instance_names is None:
        return
    names = [_safe(str(name)) for name in pred.instance_names]
    for name, mask in zip(names, pred.masks.cpu().numpy()):
        save_png_atomic(folder / f"{name}.png", mask.astype("uint8") * 255)
    if pred.instance_labels is not None and names:
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "labels" / f"{names[0]}.json", dict(zip(names, pred.instance_labels)), indent=None)


def merge_label_files(folder: Path) -> None:
    """Rank 0 after evaluation: ``labels/*.json`` fragments -> one ``labels.json`` (sorted by name)."""
    fragments = folder / "labels"
    if not fragments.is_dir():
        return
    merged: dict = {}
    for fragment in sorted(fragments.glob("*.json")):
        merged.update(json.loads(fragment.read_text(encoding="utf-8")))
    write_json_atomic(folder / "labels.json", dict(sorted(merged.items())))
    shutil.rmtree(fragments)


def davis_palette() -> list[int]:
    """The 256-colour palette of DAVIS annotations (PASCAL VOC's: the bits of an id spread
    over the high bits of R, G and B), flattened as PIL's ``putpalette`` wants it."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


def write_frame_labels(sample: Sample, pred: Prediction, folder: Path) -> None:
    """``<path>/<frame name>.png`` per frame: ``pred.frame_labels`` as indexed PNGs with the DAVIS
    palette, the layout the DAVIS toolkit reads (``meta["frame_names"]``, else ``00000``...)."""
    labels = pred.frame_labels.cpu().numpy().astype(np.uint8)
    names = sample.meta.get("frame_names") or [f"{t:05d}" for t in range(len(labels))]
    base = folder / prediction_path(sample)
    palette = davis_palette()
    for name, frame in zip(names, labels):
        save_png_atomic(base / f"{_safe(str(name))}.png", frame, palette=palette)


def object_masks(labels: torch.Tensor) -> np.ndarray:
    """H×W object ids -> K×H×W bool, mask k - 1 = object k for k = 1..max id (so an object keeps
    its colour across frames); background 0 and void 255 are left uncovered."""
    ids = labels.cpu().numpy()
    valid = ids[ids != IGNORE]
    count = int(valid.max()) if valid.size else 0
    return ids[None] == np.arange(1, count + 1).reshape(-1, 1, 1)


def middle_frame(pred: Prediction) -> int:
    """The frame a video prediction's overlay shows: the middle one, ``T // 2``."""
    return len(pred.frame_labels) // 2


def write_overlay(sample: Sample, pred: Prediction, folder: Path) -> None:
    """``<path>.png``: the predicted masks (or classes) drawn over the image; for a video, the
    predicted objects of the middle frame (:func:`middle_frame`) over that frame."""
    image = sample.image
    if pred.frame_labels is not None:
        t = middle_frame(pred)
        image, masks = sample.frames[t], object_masks(pred.frame_labels[t])
    elif pred.masks is not None:
        masks = pred.masks.cpu().numpy()
    else:
        masks = class_masks(pred.semantic)
    save_png_atomic(folder / prediction_path(sample).with_suffix(".png"), overlay_masks(image, masks))


@dataclass(frozen=True)
class PredictionWriter:
    """A task's prediction files: ``parts`` run in order for each prediction that has masks or
    a label map (the evaluation loop skips the others).

    Attributes:
        name: what it writes, for messages.
        parts: the :data:`FileWriter` functions.
    """

    name: str
    parts: tuple[FileWriter, ...]

    def __call__(self, sample: Sample, pred: Prediction, folder: Path) -> None:
        for part in self.parts:
            part(sample, pred, folder)


INSTANCE_IDS = PredictionWriter(name="instance id PNG", parts=(write_instance_ids,))
SEMANTIC_LABELS = PredictionWriter(name="class-index PNG", parts=(write_semantic_labels,))
MASK_AND_LOGITS = PredictionWriter(name="instance id PNG + logits .npy", parts=(write_instance_ids, write_logits))
INSTANCES_AND_LABELS = PredictionWriter(
    name="instance id PNG + per-instance PNGs + labels.json", parts=(write_instance_ids, write_instance_masks),
)
VIDEO_LABELS = PredictionWriter(name="indexed PNG per frame (DAVIS layout)", parts=(write_frame_labels,))
NOTHING = PredictionWriter(name="no files", parts=())
