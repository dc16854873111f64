"""Open-vocabulary instance recognition: per-GT-instance mask IoU and class accuracy (all / base
/ novel), and mask AP of detector-prompted predictions (pycocotools for COCO, the lvis API for
LVIS).

Instance mode (GT boxes or points as prompts): prediction ``i`` answers GT instance ``i``;
IoU = I / (U + 1e-8) (an empty prediction of an empty GT counts 0), accuracy = predicted class id
equals the GT class id. Detection mode: a prediction carries ``detections`` = a list of
:class:`~sambench.structures.Detection` (bbox xyxy, score, class id, H×W bool mask); they become COCO results
(``image_id``, original ``category_id``, ``score``, compressed-RLE ``segmentation``) written to
``<output_dir>/detections.json`` and scored against ``ann_file``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sambench.data.meta import DatasetMeta
from sambench.evaluation.base import SampleRecordEvaluator
from sambench.files import write_json_atomic
from sambench.registry import EVALUATORS
from sambench.structures import Detection, Sample

logger = logging.getLogger(__name__)

COCO_AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_AP_KEYS = ("AP", "APr", "APc", "APf")


def paired_iou(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """IoU = I / (U + 1e-8) of paired boolean masks N×H×W -> N float64."""
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    inter = (pred & gt).sum(1).double()
    union = (pred | gt).sum(1).double()
    return (inter / (union + 1e-8)).numpy()


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """H×W bool -> compressed RLE with ``counts`` as str (json-ready)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def apply_numpy_float_shim() -> None:
    """lvis 0.5.3 calls ``np.float`` (removed in numpy 1.24); alias it to ``float``."""
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]


def _percent(value: float) -> float | None:
    """×100; COCOeval/LVISEval report -1 (and NaN) for undefined metrics -> None."""
    value = float(value)
    return None if not np.isfinite(value) or value < 0 else value * 100


def coco_mask_ap(ann_file: str, detections: list[dict], image_ids: list | None = None) -> dict[str, float | None]:
    """pycocotools COCOeval (segm) of COCO results against ``ann_file``, restricted to
    ``image_ids`` when given."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {key: 0.0 for key in COCO_AP_KEYS}
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        gt = COCO(ann_file)
        dt = gt.loadRes(copy.deepcopy(detections))
        coco_eval = COCOeval(gt, dt, "segm")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logger.debug("COCOeval:\n%s", buffer.getvalue())
    return {key: _percent(coco_eval.stats[i]) for i, key in enumerate(COCO_AP_KEYS)}


def lvis_mask_ap(ann_file: str, detections: list[dict], image_ids: list | None = None) -> dict[str, float | None]:
    """LVISEval (segm) of COCO-format results against ``ann_file`` with a fresh GT object
    (LVISEval converts the GT polygons in place)."""
    from lvis import LVIS, LVISEval, LVISResults

    apply_numpy_float_shim()
    if not detections:
        return {key: 0.0 for key in LVIS_AP_KEYS}
    gt = LVIS(ann_file)
    dt = LVISResults(gt, copy.deepcopy(detections))
    lvis_eval = LVISEval(gt, dt, "segm")
    if image_ids is not None:
        lvis_eval.params.img_ids = sorted(image_ids)
    lvis_eval.run()
    results = lvis_eval.get_results()
    return {key: _percent(results[key]) for key in LVIS_AP_KEYS}


@EVALUATORS.register_module(name="open_vocab")
class OpenVocabEvaluator(SampleRecordEvaluator):
    """IoU / Acc (all, base, novel) per GT instance, and mask AP in detection mode.

    Args:
        class_names: the dataset's vocabulary (only used for messages).
        novel: one bool per class id (True = novel); None = no class is novel.
        category_ids: class id -> original category id (for AP); None = identity.
        ann_file: ground-truth json for AP (detection mode only).
        dataset_kind: "coco" (pycocotools) or "lvis" (lvis API) for AP.
        output_dir: where ``detections.json`` is written; None = a temporary folder.
    """

    def __init__(
        self,
        class_names: list[str] | None = None,
        novel: list[bool] | None = None,
        category_ids: list[int] | None = None,
        ann_file: str | None = None,
        dataset_kind: str = "coco",
        output_dir: str | None = None,
    ):
        super().__init__()
        if dataset_kind not in ("coco", "lvis"):
            raise ValueError(f"open_vocab evaluator: dataset_kind must be 'coco' or 'lvis', got '{dataset_kind}'")
        self.class_names = class_names
        self.novel = np.asarray(novel, dtype=bool) if novel is not None else None
        self.category_ids = list(category_ids) if category_ids is not None else None
        self.ann_file = ann_file
        self.dataset_kind = dataset_kind
        self.output_dir = output_dir

    @classmethod
    def from_meta(cls, meta: DatasetMeta, output_dir: str | None = None) -> "OpenVocabEvaluator":
        """Build from a dataset's metadata: novel flags, category ids, the GT file and its
        annotation format (``"lvis"`` -> the lvis API; ``"coco"`` or None -> pycocotools)."""
        return cls(
            class_names=list(meta.class_names), novel=list(meta.novel or []) or None,
            category_ids=list(meta.category_ids) if meta.category_ids is not None else None, ann_file=meta.ann_file,
            dataset_kind=meta.annotation_format or "coco", output_dir=output_dir,
        )

    def _category_id(self, class_id: int) -> int:
        return int(self.category_ids[class_id]) if self.category_ids is not None else int(class_id)

    def record(self, sample, prediction) -> dict[str, Any]:
        gt_classes = sample.class_ids.cpu().numpy().astype(np.int64) if sample.class_ids is not None else None
        rec: dict[str, Any] = {"image_id": sample.meta.get("image_id", sample.index)}
        if prediction.masks is not None and sample.masks is not None:
            if prediction.masks.shape != sample.masks.shape:
                raise ValueError(
                    f"prediction for sample {sample.index} has masks {tuple(prediction.masks.shape)}, "
                    f"expected one per GT instance {tuple(sample.masks.shape)}"
                )
            rec["iou"] = paired_iou(prediction.masks.cpu(), sample.masks.cpu())
            count = len(rec["iou"])
            if gt_classes is not None and prediction.class_ids is not None:
                predicted = prediction.class_ids.cpu().numpy().astype(np.int64).reshape(-1)
                if len(predicted) != count:
                    raise ValueError(f"prediction for sample {sample.index} has {len(predicted)} class ids for {count} instances")
                rec["correct"] = predicted == gt_classes
            if gt_classes is not None and self.novel is not None:
                rec["novel"] = self.novel[gt_classes]
            else:
                rec["novel"] = np.zeros(count, dtype=bool)
        if prediction.detections is not None:
            rec["detections"] = [self._result_entry(rec["image_id"], det) for det in prediction.detections]
        return rec

    def _result_entry(self, image_id, det: Detection) -> dict[str, Any]:
        mask = det.mask
        mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        return {
            "image_id": image_id,
            "category_id": self._category_id(int(det.class_id)),
            "score": float(det.score),
            "segmentation": encode_mask(mask.astype(bool)),
        }

    @staticmethod
    def _mean(values: np.ndarray, select: np.ndarray | None = None) -> float | None:
        if select is not None:
            values = values[select]
        return float(values.mean() * 100) if len(values) else None

    def compute(self) -> dict:
        records = self.gathered()
        instance = [r for r in records if "iou" in r]
        ious = np.concatenate([r["iou"] for r in instance]) if instance else np.zeros(0)
        novel = np.concatenate([r["novel"] for r in instance]) if instance else np.zeros(0, bool)
        results: dict[str, Any] = {
            "IoU": self._mean(ious), "IoU_base": self._mean(ious, ~novel), "IoU_novel": self._mean(ious, novel),
        }
        if instance and all("correct" in r for r in instance):
            correct = np.concatenate([r["correct"] for r in instance]).astype(np.float64)
            results.update(Acc=self._mean(correct), Acc_base=self._mean(correct, ~novel), Acc_novel=self._mean(correct, novel))
        else:
            results.update(Acc=None, Acc_base=None, Acc_novel=None)
        results["num_instances"] = int(len(ious))
        results["num_images"] = int(len(records))
        if any("detections" in r for r in records):
            results.update(self._detection_ap(records))
        return results

    def _detection_ap(self, records: list[dict]) -> dict[str, Any]:
        if not self.ann_file:
            raise ValueError("open_vocab evaluator: detection mode needs ann_file (the ground-truth json)")
        detections = [det for r in records for det in r.get("detections", [])]
        image_ids = [r["image_id"] for r in records]
        with contextlib.ExitStack() as stack:
            folder = Path(self.output_dir) if self.output_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / "detections.json", detections, indent=None)
            if self.dataset_kind == "lvis":
                metrics = lvis_mask_ap(self.ann_file, detections, image_ids)
            else:
                metrics = coco_mask_ap(self.ann_file, detections, image_ids)
        metrics["num_detections"] = len(detections)
        return metrics


def instance_outputs(sample: Sample, labels: torch.Tensor, scores: torch.Tensor) -> dict:
    """``save_predictions`` files (``Prediction.instance_names`` / ``instance_labels``): one mask
    per GT instance named ``<image_id>_<ann_id>`` and its predicted label (class id, name, score)
    for ``predictions/labels.json``."""
    image_id, ann_ids = sample.meta.get("image_id", sample.index), sample.meta.get("ann_ids") or range(len(labels))
    names = sample.class_names or []
    return {"instance_names": [f"{image_id}_{ann}" for ann in ann_ids],
            "instance_labels": [{"class_id": int(c), "class_name": names[int(c)] if int(c) < len(names) else None,
                                 "score": float(s)} for c, s in zip(labels.tolist(), scores.tolist())]}
