"""Semantic segmentation: a confusion matrix over the split, per-class IoU and mIoU.

Every rank accumulates a C×C matrix (rows = ground truth, columns = prediction; ignore 255
skipped); ``compute`` sums the matrices of all ranks (all-reduce), so the numbers are those of
the whole split. ``DistributedSampler`` pads the last round with repeats of the first samples:
in evaluation (in order, unshuffled) sample ``i`` belongs to rank ``i % world_size`` and the
repeats land on other ranks, so each rank counts only the samples it owns and 1-rank and N-rank
evaluations are identical. Samples with ``meta["condition"]`` (ACDC) also get a matrix per
condition: ``per_condition`` mIoUs and their mean.
"""

from __future__ import annotations

import numpy as np
import torch

from sambench import dist
from sambench.registry import EVALUATORS

IGNORE = 255


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """C×C int64 counts of (gt, pred) pairs over pixels whose gt is a class (not ignore)."""
    valid = gt < num_classes
    pairs = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Per-class IoU (C), NaN for classes absent from both ground truth and predictions."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)


@EVALUATORS.register_module(name="semantic_miou")
class SemanticEvaluator:
    """mIoU = mean of per-class IoUs over classes present in GT or prediction (×100)."""

    def __init__(self, class_names: list[str] | None = None):
        if not class_names:
            raise ValueError("semantic evaluation needs the dataset's class names")
        self.class_names = list(class_names)
        self.reset()

    def reset(self) -> None:
        self.matrices: dict[str, np.ndarray] = {}

    def _add(self, key: str, matrix: np.ndarray) -> None:
        self.matrices[key] = self.matrices.get(key, 0) + matrix

    def process(self, batch, predictions) -> None:
        rank, world = dist.rank(), dist.world_size()
        for sample, prediction in zip(batch, predictions):
            if sample.index % world != rank:  # sampler padding: another rank owns this sample
                continue
            gt, pred = sample.semantic.cpu().numpy(), prediction.semantic.cpu().numpy()
            if gt.shape != pred.shape:
                raise ValueError(f"prediction for sample {sample.index} is {pred.shape}, ground truth {gt.shape}")
            matrix = confusion(gt, pred, len(self.class_names))
            self._add("all", matrix)
            if "condition" in sample.meta:
                self._add(f"condition/{sample.meta['condition']}", matrix)

    def _reduced(self) -> dict[str, np.ndarray]:
        keys = sorted(set().union(*dist.all_gather_objects(sorted(self.matrices))))
        c = len(self.class_names)
        stacked = torch.zeros(len(keys), c, c, dtype=torch.float64)
        for i, key in enumerate(keys):
            if key in self.matrices:
                stacked[i] = torch.from_numpy(self.matrices[key].astype(np.float64))
        if dist.is_distributed():
            stacked = dist.all_reduce_sum(stacked.to(dist.collective_device()))
        return {key: stacked[i].cpu().numpy() for i, key in enumerate(keys)}

    def compute(self) -> dict:
        matrices = self._reduced()
        total = matrices.get("all", np.zeros((len(self.class_names),) * 2))
        ious = iou_from_confusion(total)
        metrics = {
            "mIoU": float(np.nanmean(ious) * 100) if np.isfinite(ious).any() else float("nan"),
            "aAcc": float(np.trace(total) / total.sum() * 100) if total.sum() else float("nan"),
            "per_class": {name: (float(v * 100) if np.isfinite(v) else None) for name, v in zip(self.class_names, ious)},
            "num_pixels": int(total.sum()),
        }
        conditions = {k.split("/", 1)[1]: np.nanmean(iou_from_confusion(m)) * 100 for k, m in matrices.items() if k.startswith("condition/")}
        if conditions:
            metrics["per_condition"] = {k: float(v) for k, v in sorted(conditions.items())}
            metrics["mIoU_condition_mean"] = float(np.mean(list(conditions.values())))
        return metrics

