"""Personalised segmentation on PerSeg: per-object accumulated IoU, Acc and boundary IoU.

As PerSAM's ``eval_miou.py``: per object, IoU = ΣI / ΣU and Acc = ΣI / Σ|GT| over its
(non-reference) images, then the mean over objects. bIoU is the Boundary IoU of Cheng et al.
(2021) accumulated the same way (no official script exists; implemented from the definition).
FB-IoU (the one-shot benchmarks' second metric, HSNet ``common/logger.py``
``AverageMeter.compute_iou``): the mean of the foreground IoU ΣI/ΣU and the background IoU
(``~pred & ~gt`` over ``~pred | ~gt``) each accumulated over all images, whatever their object.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sambench.evaluation.base import SampleRecordEvaluator
from sambench.registry import EVALUATORS

SQUARE_3X3 = np.ones((3, 3), dtype=bool)


def mask_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Boundary region of an H×W bool mask -> H×W bool (Cheng et al. 2021, Boundary IoU).

    The mask minus its erosion by ``d = max(1, round(dilation_ratio × image diagonal))``
    iterations of a 3×3 square, the mask zero-padded by one pixel (pixels on the image border
    count as boundary): the pixels within ``d`` of the outside.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    dilation = max(1, int(round(dilation_ratio * np.hypot(height, width))))
    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=SQUARE_3X3, iterations=dilation)[1:-1, 1:-1]
    return mask & ~eroded


def union_mask(masks, size: tuple[int, int], what: str) -> np.ndarray:
    """N×H×W masks (N may be 0, or None) -> their union, H×W bool."""
    if masks is None or masks.shape[0] == 0:
        return np.zeros(size, dtype=bool)
    if tuple(masks.shape[1:]) != size:
        raise ValueError(f"{what} has masks {tuple(masks.shape)}, expected N×{size[0]}×{size[1]}")
    return masks.bool().any(0).cpu().numpy()


def ratio(part: int, whole: int) -> float:
    """part / whole for counts with part <= whole; 1.0 when both are 0 (nothing to find and
    nothing predicted)."""
    return part / whole if whole else 1.0


def fb_iou(records: list[dict]) -> float:
    """HSNet's FB-IoU (percent): mean of ΣI/ΣU of the foreground and of the background over all
    ``records``; NaN without records."""
    if not records:
        return float("nan")
    foreground = ratio(sum(r["intersection"] for r in records), sum(r["union"] for r in records))
    background = ratio(sum(r["background_intersection"] for r in records), sum(r["background_union"] for r in records))
    return (foreground + background) / 2 * 100


@EVALUATORS.register_module(name="personalization")
class PersonalizationEvaluator(SampleRecordEvaluator):
    """mIoU / bIoU / mAcc (percent) = means over objects of accumulated per-object scores.

    A prediction's N masks are merged into one (N = 0 predicts nothing). ``compute`` also gives
    ``per_object`` ({object: {IoU, bIoU, Acc, images}}), ``num_objects``, ``num_images`` and
    ``fallbacks`` (the sum of ``prediction.fallbacks``, e.g. PerSAM's empty-mask cases), and
    ``FB-IoU`` (percent; HSNet's definition, see the module docstring).
    """

    def __init__(self, class_names: list[str] | None = None):
        super().__init__()  # class_names: passed by the builder, not used

    def record(self, sample, prediction) -> dict:
        if sample.masks is None:
            raise ValueError(f"sample {sample.index} has no ground-truth mask to evaluate against")
        gt = union_mask(sample.masks, sample.size, f"sample {sample.index}")
        pred = union_mask(prediction.masks, sample.size, f"prediction for sample {sample.index}")
        gt_boundary, pred_boundary = mask_boundary(gt), mask_boundary(pred)
        return {
            "object": sample.meta["object"],
            "intersection": int((pred & gt).sum()),
            "union": int((pred | gt).sum()),
            "boundary_intersection": int((pred_boundary & gt_boundary).sum()),
            "boundary_union": int((pred_boundary | gt_boundary).sum()),
            "gt": int(gt.sum()),
            "background_intersection": int((~pred & ~gt).sum()),
            "background_union": int((~pred | ~gt).sum()),
            "fallbacks": int(prediction.fallbacks),
        }

    def compute(self) -> dict:
        records = self.gathered()
        totals: dict[str, dict[str, int]] = {}
        for rec in records:
            total = totals.setdefault(rec["object"], dict.fromkeys(("I", "U", "bI", "bU", "gt", "images"), 0))
            total["I"] += rec["intersection"]
            total["U"] += rec["union"]
            total["bI"] += rec["boundary_intersection"]
            total["bU"] += rec["boundary_union"]
            total["gt"] += rec["gt"]
            total["images"] += 1
        per_object = {}
        for obj in sorted(totals):
            t = totals[obj]
            per_object[obj] = {
                "IoU": ratio(t["I"], t["U"]) * 100,
                "bIoU": ratio(t["bI"], t["bU"]) * 100,
                # with no GT pixels, Acc follows IoU: 100 only if nothing was predicted either
                "Acc": ratio(t["I"], t["gt"] or t["U"]) * 100,
                "images": t["images"],
            }

        def mean(key: str) -> float:
            return float(np.mean([s[key] for s in per_object.values()])) if per_object else float("nan")

        return {
            "mIoU": mean("IoU"),
            "FB-IoU": fb_iou(records),
            "bIoU": mean("bIoU"),
            "mAcc": mean("Acc"),
            "num_objects": len(per_object),
            "num_images": len(records),
            "fallbacks": sum(rec["fallbacks"] for rec in records),
            "per_object": per_object,
        }
