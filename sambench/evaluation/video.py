"""Semi-supervised video object segmentation (DAVIS 2017): J, F and J&F as the official toolkit
computes them (``davis2017/evaluation.py``), from the per-frame measures in
:mod:`sambench.evaluation.davis_metrics`.

Per sequence: the objects are 1..max(first-frame ground truth) once void (255) is set to
background; void pixels are not excluded otherwise (the semi-supervised path passes no void
mask). Frames 1..T-2 are scored (the given first frame and the last frame are dropped). A
predicted id above the number of objects is an error; an object the prediction never shows
scores J = 0 (and F = 0 where its ground truth has a boundary). The global means are over all
objects of all sequences, so a sequence with more objects weighs more.
"""

from __future__ import annotations

import numpy as np

from sambench.evaluation import davis_metrics as dm
from sambench.evaluation.base import SampleRecordEvaluator
from sambench.registry import EVALUATORS

VOID = 255


def ground_truth_objects(frame_labels: np.ndarray) -> int:
    """Number of objects of a sequence: max of its first frame with void set to 0."""
    first = np.where(frame_labels[0] == VOID, 0, frame_labels[0])
    return int(first.max())


def score_sequence(truth: np.ndarray, prediction: np.ndarray, name: str = "") -> list[dict]:
    """Per-object per-frame J and F of one sequence.

    Args:
        truth: T×H×W ground-truth ids (0 background, k object k, 255 void).
        prediction: T×H×W predicted ids (frame 0 and T-1 are not read).
        name: the sequence, for messages.

    Returns:
        ``[{"object": k, "J": [T-2 floats], "F": [T-2 floats]}`` for k = 1..N.
    """
    truth, prediction = np.asarray(truth), np.asarray(prediction)
    if truth.ndim != 3 or prediction.shape != truth.shape:
        raise ValueError(
            f"sequence {name!r}: predicted frame labels {prediction.shape} do not match the ground truth "
            f"{truth.shape} (expected T×H×W each)"
        )
    count = ground_truth_objects(truth)
    truth = np.where(truth == VOID, 0, truth)[1:-1]
    prediction = prediction[1:-1]
    highest = int(prediction.max()) if prediction.size else 0
    if highest > count:
        raise ValueError(
            f"sequence {name!r}: the prediction holds object id {highest}, but the first frame has "
            f"{count} object(s) (expected ids 0..{count}, as the DAVIS toolkit requires)"
        )
    objects = []
    for k in range(1, count + 1):
        frames = list(zip(prediction == k, truth == k))
        objects.append({
            "object": k,
            "J": [dm.region_similarity(p, g) for p, g in frames],
            "F": [dm.boundary_f_measure(p, g) for p, g in frames],
        })
    return objects


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


@EVALUATORS.register_module(name="video_object")
class VideoObjectEvaluator(SampleRecordEvaluator):
    """DAVIS semi-supervised J / F / J&F (percent) over the sequences of a dataset.

    A sample is a sequence (``sample.frame_labels``, ``meta["sequence"]``); a prediction its
    ``frame_labels``. ``compute`` gives ``J&F`` = (J-Mean + F-Mean) / 2, ``J-Mean``,
    ``J-Recall``, ``J-Decay``, ``F-Mean``, ``F-Recall``, ``F-Decay`` (means over all objects),
    ``num_sequences``, ``num_objects``, ``per_sequence`` ({sequence: {J-Mean, F-Mean}}, means over
    its objects), ``per_object`` ({``<sequence>_<k>``: {J-Mean, F-Mean}}, the toolkit's names)
    and ``fallbacks`` (the sum of ``prediction.fallbacks``).
    """

    def __init__(self, class_names: list[str] | None = None):
        super().__init__()  # class_names: passed by the builder, not used

    def record(self, sample, prediction) -> dict:
        name = str(sample.meta.get("sequence", sample.meta.get("name", sample.index)))
        if sample.frame_labels is None:
            raise ValueError(f"sample {sample.index} ({name}) has no ground-truth frame labels to evaluate against")
        if prediction.frame_labels is None:
            raise ValueError(f"the prediction for sequence {name!r} has no frame_labels (expected T×H×W object ids)")
        truth = sample.frame_labels.cpu().numpy()
        predicted = prediction.frame_labels.cpu().numpy()
        return {"sequence": name, "objects": score_sequence(truth, predicted, name),
                "fallbacks": int(prediction.fallbacks)}

    def compute(self) -> dict:
        records = self.gathered()
        scores = {"J": {"M": [], "R": [], "D": []}, "F": {"M": [], "R": [], "D": []}}
        per_object: dict[str, dict[str, float]] = {}
        per_sequence: dict[str, dict[str, float]] = {}
        for rec in records:
            sequence_means = {"J": [], "F": []}
            for obj in rec["objects"]:
                row = {}
                for measure in ("J", "F"):
                    mean, recall, decay = dm.statistics(obj[measure])
                    for key, value in zip("MRD", (mean, recall, decay)):
                        scores[measure][key].append(value)
                    sequence_means[measure].append(mean)
                    row[f"{measure}-Mean"] = mean * 100
                per_object[f"{rec['sequence']}_{obj['object']}"] = row
            per_sequence[rec["sequence"]] = {
                "J-Mean": _mean(sequence_means["J"]) * 100, "F-Mean": _mean(sequence_means["F"]) * 100,
            }
        result = {}
        for measure in ("J", "F"):
            for key, label in (("M", "Mean"), ("R", "Recall"), ("D", "Decay")):
                result[f"{measure}-{label}"] = _mean(scores[measure][key]) * 100
        return {
            "J&F": (result["J-Mean"] + result["F-Mean"]) / 2,
            **result,
            "num_sequences": len(records),
            "num_objects": len(per_object),
            "per_sequence": per_sequence,
            "per_object": per_object,
            "fallbacks": sum(rec["fallbacks"] for rec in records),
        }
