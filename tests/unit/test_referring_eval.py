"""Referring metrics against hand-computed values, and the letterbox round trip
(DIT's input path itself: test_dit_input_path.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sambench.evaluation.referring import ReferringEvaluator
from sambench_plugins.methods.dit.preprocess import letterbox, placement, unletterbox
from sambench.structures import Batch, Prediction, Sample


def sample_and_prediction(index, gt_pixels, pred_pixels, size=(4, 5)):
    gt, pred = torch.zeros(1, *size, dtype=torch.bool), torch.zeros(1, *size, dtype=torch.bool)
    gt.view(-1)[list(gt_pixels)] = True
    pred.view(-1)[list(pred_pixels)] = True
    image = np.zeros((*size, 3), np.uint8)
    return Sample(index=index, image=image, masks=gt, texts=["x"]), Prediction(index=index, masks=pred)


def test_oiou_miou_and_precision_by_hand():
    cases = [
        (range(0, 10), range(0, 10)),   # I=10 U=10 IoU=1
        (range(0, 10), range(0, 7)),    # I=7  U=10 IoU=0.7 (not > 0.7)
        (range(0, 4), range(2, 6)),     # I=2  U=6  IoU=1/3
        (range(0, 2), range(10, 12)),   # I=0  U=4  IoU=0
        ([], []),                       # I=0  U=0  IoU=1 (official: (0+eps)/(0+eps))
    ]
    evaluator = ReferringEvaluator()
    pairs = [sample_and_prediction(i, g, p) for i, (g, p) in enumerate(cases)]
    evaluator.process(Batch([s for s, _ in pairs[:3]]), [p for _, p in pairs[:3]])
    evaluator.process(Batch([s for s, _ in pairs[3:]]), [p for _, p in pairs[3:]])
    evaluator.process(Batch([pairs[0][0]]), [pairs[3][1]])  # a padded duplicate index: ignored
    m = evaluator.compute()
    assert m["oIoU"] == pytest.approx(19 / 30 * 100)
    assert m["mIoU"] == pytest.approx((1 + 0.7 + 1 / 3 + 0 + 1) / 5 * 100)
    assert m["P@0.5"] == pytest.approx(60.0)   # 1, 0.7, 1
    assert m["P@0.7"] == pytest.approx(40.0)   # strictly greater: 0.7 does not count
    assert m["precision"]["P@0.65"] == pytest.approx(60.0)
    assert m["P@0.9"] == pytest.approx(40.0)
    assert m["precision"]["P@0.95"] == pytest.approx(40.0) and m["num_samples"] == 5
    assert len(m["precision"]) == 10 and m["precision"]["P@0.7"] == m["P@0.7"]


def test_shape_mismatch_is_an_error():
    sample, prediction = sample_and_prediction(0, [1], [1])
    prediction.masks = torch.zeros(1, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="expected"):
        ReferringEvaluator().process(Batch([sample]), [prediction])


def test_letterbox_round_trip_and_centre_padding():
    where = placement((30, 60), 64, 64)
    assert (where.top, where.left, where.height, where.width) == (16, 0, 32, 64)
    mask = torch.zeros(1, 1, 30, 60)
    mask[..., 5:20, 10:40] = 1
    boxed = letterbox(mask, where, 64)
    assert boxed[..., :16, :].sum() == 0 and boxed[..., 48:, :].sum() == 0
    back = unletterbox(boxed, where, (30, 60)) > 0.5
    assert (back == (mask > 0.5)).float().mean() > 0.97
