"""One evaluation pass, shared by training (periodic evaluation) and ``tools/eval.py``."""

from __future__ import annotations

import json
import shutil

from pathlib import Path

import numpy as np
import torch

from sambench.engine.precision import autocast
from sambench.files import write_json_atomic, write_npy_atomic
from sambench.logging.console import progress
from sambench.dist import rank
from sambench.structures import Prediction, Sample
from sambench.vis import instance_id_map, overlay_masks, save_png_atomic

IGNORE = 255


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


@torch.no_grad()
def evaluate(
    method,
    loader,
    evaluator,
    *,
    device: torch.device,
    precision: str = "fp32",
    predictions_dir: Path | None = None,
    overlays_dir: Path | None = None,
    num_overlays: int = 0,
) -> tuple[dict, list[dict]]:
    """Run ``method.predict`` over ``loader``; return (metrics, overlay items for the logger).

    With ``predictions_dir``/``overlays_dir``, each rank writes its samples' masks as PNG
    (instance ids: 0 background, i for mask i; one mask -> non-zero = foreground) and overlays,
    at ``<dir>/<prediction path>.png``; a prediction with ``meta["logits"]`` (a tensor) also
    gets ``<predictions_dir>/<prediction path>.npy`` (float32, as the method returned it).
    """
    was_training = method.training
    method.eval()
    evaluator.reset()
    overlays: list[dict] = []
    writes_files = predictions_dir is not None or overlays_dir is not None
    try:
        for batch in progress(loader, desc="eval", rank=rank()):
            with autocast(device, precision):
                predictions = method.predict(batch)
            evaluator.process(batch, predictions)
            for sample, pred in zip(batch, predictions):
                has_output = pred.masks is not None or pred.semantic is not None
                if writes_files and has_output:
                    write_prediction(sample, pred, predictions_dir, overlays_dir)
                if len(overlays) < num_overlays and has_output:
                    overlays.append(overlay_item(sample, pred))
        metrics = evaluator.compute()
    finally:
        method.train(was_training)
    return metrics, overlays


def class_masks(semantic: torch.Tensor) -> np.ndarray:
    """H×W class indices -> (max class + 1)×H×W bool masks, mask c = class c (so an overlay
    colours each class consistently); ignore (255) is left uncovered."""
    labels = semantic.cpu().numpy()
    valid = labels[labels != IGNORE]
    count = int(valid.max()) + 1 if valid.size else 0
    return labels[None] == np.arange(count).reshape(-1, 1, 1)


def write_prediction(sample: Sample, pred: Prediction, predictions_dir: Path | None, overlays_dir: Path | None) -> None:
    """Instance masks -> an id PNG (0 = background, i + 1 = mask i); a semantic prediction -> a
    class-index PNG (the dataset's contiguous ids), plus ``meta["logits"]`` as a float32 ``.npy``
    beside it when present (e.g. DIT's 512×512 logits before the threshold). Overlays go to
    ``overlays_dir``."""
    relative = prediction_path(sample).with_suffix(".png")
    masks = pred.masks.cpu().numpy() if pred.masks is not None else class_masks(pred.semantic)
    if predictions_dir is not None:
        ids = pred.semantic.cpu().numpy() if pred.semantic is not None else instance_id_map(masks)
        save_png_atomic(predictions_dir / relative, ids.astype("uint16" if ids.max() > 255 else "uint8"))
        logits = pred.meta.get("logits")
        if isinstance(logits, torch.Tensor):
            write_npy_atomic(predictions_dir / relative.with_suffix(".npy"), logits.detach().float().cpu().numpy())
        if "instance_names" in pred.meta:
            write_instance_files(pred, predictions_dir)
    if overlays_dir is not None:
        save_png_atomic(overlays_dir / relative, overlay_masks(sample.image, masks))


def write_instance_files(pred: Prediction, predictions_dir: Path) -> None:
    """One binary PNG (0 / 255) per instance, ``<predictions_dir>/<name>.png`` for the names in
    ``meta["instance_names"]``, and their labels (``meta["instance_labels"]``: one dict each) in a
    fragment ``<predictions_dir>/labels/<first name>.json`` that :func:`merge_label_files` joins."""
    names = [_safe(str(name)) for name in pred.meta["instance_names"]]
    for name, mask in zip(names, pred.masks.cpu().numpy()):
        save_png_atomic(predictions_dir / f"{name}.png", mask.astype("uint8") * 255)
    labels = pred.meta.get("instance_labels")
    if labels is not None and names:
        (predictions_dir / "labels").mkdir(parents=True, exist_ok=True)
        write_json_atomic(predictions_dir / "labels" / f"{names[0]}.json", dict(zip(names, labels)), indent=None)


def merge_label_files(predictions_dir: Path) -> None:
    """Rank 0 after evaluation: ``labels/*.json`` fragments -> one ``labels.json`` (sorted by name)."""
    folder = predictions_dir / "labels"
    if not folder.is_dir():
        return
    merged: dict = {}
    for fragment in sorted(folder.glob("*.json")):
        merged.update(json.loads(fragment.read_text(encoding="utf-8")))
    write_json_atomic(predictions_dir / "labels.json", dict(sorted(merged.items())))
    shutil.rmtree(folder)


def overlay_item(sample: Sample, pred: Prediction) -> dict:
    if pred.semantic is not None:
        gt = instance_id_map(class_masks(sample.semantic)) if sample.semantic is not None else None
        predicted = instance_id_map(class_masks(pred.semantic))
    else:
        gt = instance_id_map(sample.masks.cpu().numpy()) if sample.masks is not None else None
        predicted = instance_id_map(pred.masks.cpu().numpy())
    return {
        "image": sample.image,
        "pred": predicted,
        "gt": gt,
        "caption": sample_name(sample),
        "class_labels": None,
    }
