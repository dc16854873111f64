"""One evaluation pass, shared by training (periodic evaluation) and ``tools/eval.py``."""

from __future__ import annotations

from pathlib import Path

import torch

from sambench.engine.precision import autocast
from sambench.logging.console import progress
from sambench.engine.dist import rank
from sambench.structures import Prediction, Sample
from sambench.vis import instance_id_map, overlay_masks, save_png_atomic


def sample_name(sample: Sample) -> str:
    """A file-name-safe name for a sample (meta name, file stem or index)."""
    meta = sample.meta
    name = meta.get("name") or (Path(meta["file_name"]).stem if "file_name" in meta else f"{sample.index:06d}")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


@torch.no_grad()
def evaluate(
    method,
    loader,
    evaluator,
    *,
    device: torch.device,
    precision: str = "fp32",
    predictions_dir: Path | None = None,
    num_overlays: int = 0,
) -> tuple[dict, list[dict]]:
    """Run ``method.predict`` over ``loader``; return (metrics, overlay items for the logger).

    With ``predictions_dir``, each rank writes its samples' instance-id PNGs to
    ``predictions_dir/<name>.png`` and overlays to ``predictions_dir/../vis/<name>.png``.
    """
    was_training = method.training
    method.eval()
    evaluator.reset()
    overlays: list[dict] = []
    try:
        for batch in progress(loader, desc="eval", rank=rank()):
            with autocast(device, precision):
                predictions = method.predict(batch)
            evaluator.process(batch, predictions)
            for sample, pred in zip(batch, predictions):
                if predictions_dir is not None:
                    write_prediction(sample, pred, predictions_dir)
                if len(overlays) < num_overlays and pred.masks is not None:
                    overlays.append(overlay_item(sample, pred))
        metrics = evaluator.compute()
    finally:
        method.train(was_training)
    return metrics, overlays


def write_prediction(sample: Sample, pred: Prediction, predictions_dir: Path) -> None:
    name = sample_name(sample)
    if pred.masks is not None:
        ids = instance_id_map(pred.masks.cpu().numpy())
        save_png_atomic(predictions_dir / f"{name}.png", ids.astype("uint16" if ids.max() > 255 else "uint8"))
        save_png_atomic(predictions_dir.parent / "vis" / f"{name}.png", overlay_masks(sample.image, pred.masks.cpu().numpy()))


def overlay_item(sample: Sample, pred: Prediction) -> dict:
    gt = instance_id_map(sample.masks.cpu().numpy()) if sample.masks is not None else None
    return {
        "image": sample.image,
        "pred": instance_id_map(pred.masks.cpu().numpy()),
        "gt": gt,
        "caption": sample_name(sample),
        "class_labels": None,
    }
