"""One evaluation pass, shared by training (periodic evaluation) and ``tools/eval.py``."""

from __future__ import annotations

from pathlib import Path

import torch

from sambench.engine.precision import autocast
from sambench.evaluation.prediction_files import (
    PredictionWriter, class_masks, middle_frame, object_masks, sample_name, write_overlay,
)
from sambench.logging.console import progress
from sambench.dist import rank
from sambench.structures import Prediction, Sample
from sambench.vis import instance_id_map


@torch.no_grad()
def evaluate(
    method,
    loader,
    evaluator,
    *,
    device: torch.device,
    precision: str = "fp32",
    writer: PredictionWriter | None = None,
    predictions_dir: Path | None = None,
    overlays_dir: Path | None = None,
    num_overlays: int = 0,
) -> tuple[dict, list[dict]]:
    """Run ``method.predict`` over ``loader``; return (metrics, overlay items for the logger).

    With ``predictions_dir``, each rank writes its samples' prediction files there with
    ``writer`` (the task's, :attr:`sambench.tasks.Task.writer`); with ``overlays_dir``, their
    overlays at ``<dir>/<prediction path>.png``. Predictions without masks, a label map or frame
    labels (e.g. detections, distillation scores) write nothing.
    """
    if predictions_dir is not None and writer is None:
        raise ValueError("evaluate: predictions_dir needs the task's prediction writer")
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
                has_output = pred.masks is not None or pred.semantic is not None or pred.frame_labels is not None
                if predictions_dir is not None and has_output:
                    writer(sample, pred, predictions_dir)
                if overlays_dir is not None and has_output:
                    write_overlay(sample, pred, overlays_dir)
                if len(overlays) < num_overlays and has_output:
                    overlays.append(overlay_item(sample, pred))
        metrics = evaluator.compute()
    finally:
        method.train(was_training)
    return metrics, overlays


def overlay_item(sample: Sample, pred: Prediction) -> dict:
    """The logger's overlay of one prediction; a video shows its middle frame."""
    image = sample.image
    if pred.frame_labels is not None:
        t = middle_frame(pred)
        image = sample.frames[t]
        gt = instance_id_map(object_masks(sample.frame_labels[t])) if sample.frame_labels is not None else None
        predicted = instance_id_map(object_masks(pred.frame_labels[t]))
    elif pred.semantic is not None:
        gt = instance_id_map(class_masks(sample.semantic)) if sample.semantic is not None else None
        predicted = instance_id_map(class_masks(pred.semantic))
    else:
        gt = instance_id_map(sample.masks.cpu().numpy()) if sample.masks is not None else None
        predicted = instance_id_map(pred.masks.cpu().numpy())
    return {
        "image": image,
        "pred": predicted,
        "gt": gt,
        "caption": sample_name(sample),
        "class_labels": None,
    }
