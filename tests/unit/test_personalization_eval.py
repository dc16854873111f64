"""PersonalizationEvaluator: accumulated per-object IoU/Acc, Boundary IoU, fallbacks, DDP padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sambench.evaluation.personalization import PersonalizationEvaluator, mask_boundary
from sambench.structures import Batch, Prediction, Sample


def rows(height: int, width: int, start: int, stop: int, cols: slice = slice(None)) -> np.ndarray:
    """H×W bool with rows start..stop-1 (and ``cols``) set."""
    mask = np.zeros((height, width), bool)
    mask[start:stop, cols] = True
    return mask


def pair(index: int, obj: str, gt: np.ndarray, pred: list[np.ndarray], fallbacks: int = 0) -> tuple[Sample, Prediction]:
    height, width = gt.shape
    sample = Sample(
        index=index, image=np.zeros((height, width, 3), np.uint8), masks=torch.from_numpy(gt[None]),
        meta={"object": obj},
    )
    masks = torch.from_numpy(np.stack(pred)) if pred else torch.zeros(0, height, width, dtype=torch.bool)
    return sample, Prediction(index=index, masks=masks, fallbacks=fallbacks)


def evaluate(*pairs) -> dict:
    evaluator = PersonalizationEvaluator(class_names=None)
    evaluator.process(Batch([p[0] for p in pairs]), [p[1] for p in pairs])
    return evaluator.compute()


def test_accumulated_iou_and_acc_per_object():
    # object a: a perfect 50-pixel image and a missed 10-pixel one (prediction disjoint, 10 px)
    a1 = pair(0, "a", rows(10, 10, 0, 5), [rows(10, 10, 0, 5)])
    a2 = pair(1, "a", rows(10, 10, 0, 1), [rows(10, 10, 9, 10)])
    # object b: GT 20 px; two predicted masks whose union covers 10 px of it and 10 px outside
    b1 = pair(2, "b", rows(10, 10, 0, 2), [rows(10, 10, 1, 2), rows(10, 10, 2, 3)])
    result = evaluate(a1, a2, b1)
    iou_a, iou_b = 50 / 70 * 100, 10 / 30 * 100
    assert result["per_object"]["a"]["IoU"] == pytest.approx(iou_a)
    assert result["per_object"]["a"]["IoU"] != pytest.approx((1.0 + 0.0) / 2 * 100)  # not a mean of per-image IoUs
    assert result["per_object"]["b"]["IoU"] == pytest.approx(iou_b)
    assert result["per_object"]["a"]["Acc"] == pytest.approx(50 / 60 * 100)
    assert result["per_object"]["b"]["Acc"] == pytest.approx(10 / 20 * 100)
    assert result["mIoU"] == pytest.approx((iou_a + iou_b) / 2)
    assert result["mAcc"] == pytest.approx((50 / 60 + 10 / 20) / 2 * 100)
    assert (result["num_objects"], result["num_images"]) == (2, 3)
    assert [result["per_object"][o]["images"] for o in ("a", "b")] == [2, 1]


def test_no_predicted_mask_and_empty_union():
    missed = pair(0, "a", rows(8, 8, 0, 4), [])  # N = 0 masks: predicts nothing
    nothing = pair(1, "b", np.zeros((8, 8), bool), [np.zeros((8, 8), bool)])
    result = evaluate(missed, nothing)
    assert result["per_object"]["a"]["IoU"] == 0 and result["per_object"]["a"]["Acc"] == 0
    assert result["per_object"]["b"] == {"IoU": 100.0, "bIoU": 100.0, "Acc": 100.0, "images": 1}
    spurious = pair(0, "c", np.zeros((8, 8), bool), [rows(8, 8, 0, 1)])
    assert evaluate(spurious)["per_object"]["c"]["IoU"] == 0 and evaluate(spurious)["per_object"]["c"]["Acc"] == 0


def test_boundary_of_a_square_is_a_ring_of_width_d():
    # 100×100: diagonal 141.4, 0.02 × 141.4 = 2.83 -> d = 3
    mask = np.zeros((100, 100), bool)
    mask[20:60, 30:70] = True
    ring = mask.copy()
    ring[23:57, 33:67] = False
    assert np.array_equal(mask_boundary(mask), ring)
    assert mask_boundary(mask).sum() == 40 * 40 - 34 * 34
    # the image border counts as outside (zero padding): a full mask gives a frame of width 3
    full = mask_boundary(np.ones((100, 100), bool))
    assert full.sum() == 100 * 100 - 94 * 94 and not full[3:97, 3:97].any()
    # tiny images still get d = 1 (0.02 × 14.1 rounds to 0)
    small = np.zeros((10, 10), bool)
    small[2:8, 2:8] = True
    assert mask_boundary(small).sum() == 36 - 16


def test_boundary_iou_perfect_and_shifted():
    gt = np.zeros((100, 100), bool)
    gt[20:60, 30:70] = True
    assert evaluate(pair(0, "a", gt, [gt]))["bIoU"] == pytest.approx(100.0)
    shifted = np.roll(gt, 2, axis=1)
    result = evaluate(pair(0, "a", gt, [shifted]))
    assert 0 < result["bIoU"] < 100 and result["bIoU"] < result["mIoU"]  # boundaries punish the shift more


def test_fallbacks_summed_and_duplicates_dropped():
    first = pair(0, "a", rows(10, 10, 0, 5), [rows(10, 10, 0, 5)], fallbacks=1)
    second = pair(1, "a", rows(10, 10, 0, 5), [rows(10, 10, 0, 5)], fallbacks=2)
    third = pair(2, "b", rows(10, 10, 0, 5), [rows(10, 10, 0, 5)])  # fallbacks not set -> 0
    padding = pair(0, "a", rows(10, 10, 0, 5), [np.zeros((10, 10), bool)], fallbacks=5)  # sampler repeat of index 0
    evaluator = PersonalizationEvaluator()
    evaluator.process(Batch([first[0], second[0]]), [first[1], second[1]])
    evaluator.process(Batch([third[0], padding[0]]), [third[1], padding[1]])
    result = evaluator.compute()
    assert result["fallbacks"] == 3 and result["num_images"] == 3
    assert result["per_object"]["a"]["IoU"] == pytest.approx(100.0)  # the padded duplicate is ignored


def test_prediction_of_the_wrong_size_is_refused():
    sample, _ = pair(0, "a", rows(10, 10, 0, 5), [])
    wrong = Prediction(index=0, masks=torch.zeros(1, 10, 12, dtype=torch.bool))
    with pytest.raises(ValueError, match="prediction for sample 0"):
        PersonalizationEvaluator().record(sample, wrong)


def test_empty_evaluation_is_nan():
    result = PersonalizationEvaluator().compute()
    assert np.isnan(result["mIoU"]) and result["num_images"] == 0 and result["per_object"] == {}
