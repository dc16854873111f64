"""Referring image segmentation metrics: oIoU, mIoU and precision at IoU thresholds.

Per sample (one expression): I = |pred ∧ gt|, U = |pred ∨ gt|, IoU = I/U (1 when U = 0: the
official (I + 1e-10)/(U + 1e-10) without its 1e-10 perturbation, so an exact 7/10 is not > 0.7).
- oIoU = ΣI / ΣU over the whole split (records of every rank are gathered first, so it is the
  global ratio; the official code averages per-rank values under DDP, which is wrong);
- mIoU = mean of per-sample IoUs;
- P@X = % of samples with IoU strictly greater than X: ``P@0.5``, ``P@0.7``, ``P@0.9`` at the top
  level and every X in 0.5, 0.55, …, 0.95 under ``precision``.
All in percent.
"""

from __future__ import annotations

import numpy as np

from sambench.evaluation.base import SampleRecordEvaluator
from sambench.registry import EVALUATORS

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
HEADLINE = ("P@0.5", "P@0.7", "P@0.9")


def referring_metrics(intersections: np.ndarray, unions: np.ndarray) -> dict:
    """Metrics from per-sample pixel counts (N each)."""
    ious = np.divide(intersections, unions, out=np.ones_like(unions, dtype=np.float64), where=unions > 0)
    metrics = {
        "oIoU": float(intersections.sum() / unions.sum() * 100) if unions.sum() > 0 else float("nan"),
        "mIoU": float(ious.mean() * 100) if len(ious) else float("nan"),
    }
    precision = {f"P@{x:g}": float((ious > x).mean() * 100) if len(ious) else float("nan") for x in THRESHOLDS}
    metrics.update({key: precision[key] for key in HEADLINE})
    metrics["precision"] = precision
    metrics["num_samples"] = int(len(ious))
    return metrics


@EVALUATORS.register_module(name="referring")
class ReferringEvaluator(SampleRecordEvaluator):
    """One record (I, U) per sample: the predicted mask vs the referent's GT mask (1×H×W each)."""

    def __init__(self, class_names: list[str] | None = None):
        super().__init__()

    def record(self, sample, prediction):
        pred, gt = prediction.masks.cpu().bool(), sample.masks.cpu().bool()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction for sample {sample.index} has shape {tuple(pred.shape)}, expected {tuple(gt.shape)}")
        return int((pred & gt).sum()), int((pred | gt).sum())

    def compute(self) -> dict:
        records = self.gathered()
        counts = np.asarray(records, dtype=np.float64).reshape(-1, 2)
        return referring_metrics(counts[:, 0], counts[:, 1])
