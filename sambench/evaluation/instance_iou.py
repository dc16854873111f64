"""Per-instance mask IoU for prompted segmentation (one predicted mask per GT instance)."""

from __future__ import annotations

import numpy as np
import torch

from sambench.evaluation.base import SampleRecordEvaluator
from sambench.registry import EVALUATORS


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of paired boolean masks N×H×W -> N (an empty union counts as IoU 1)."""
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    inter = (pred & gt).sum(1).double()
    union = (pred | gt).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@EVALUATORS.register_module(name="instance_iou")
class InstanceIoUEvaluator(SampleRecordEvaluator):
    """mIoU = mean over all GT instances of IoU(prediction i, GT instance i), in percent.

    Also reports the mean per class (``per_class``) and the instance/image counts.
    """

    def __init__(self, class_names: list[str] | None = None):
        super().__init__()
        self.class_names = class_names

    def record(self, sample, prediction):
        if prediction.masks.shape != sample.masks.shape:
            raise ValueError(
                f"prediction for sample {sample.index} has masks {tuple(prediction.masks.shape)}, "
                f"expected one per GT instance {tuple(sample.masks.shape)}"
            )
        ious = mask_iou(prediction.masks.cpu(), sample.masks.cpu()).numpy()
        classes = sample.class_ids.cpu().numpy() if sample.class_ids is not None else np.zeros(len(ious), int)
        return ious, classes

    def compute(self) -> dict:
        records = self.gathered()
        ious = np.concatenate([r[0] for r in records]) if records else np.zeros(0)
        classes = np.concatenate([r[1] for r in records]) if records else np.zeros(0, int)
        per_class = {}
        for cls in np.unique(classes):
            name = self.class_names[cls] if self.class_names else str(int(cls))
            per_class[name] = float(ious[classes == cls].mean() * 100)
        return {
            "mIoU": float(ious.mean() * 100) if len(ious) else float("nan"),
            "num_instances": int(len(ious)),
            "num_images": int(len(records)),
            "per_class": per_class,
        }
