"""DAVIS J / F / J&F: per-frame measures against hand computations, the per-object statistics,
the semi-supervised protocol (void, dropped frames, ids) and the evaluator's gathering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sambench.evaluation import base as evaluation_base
from sambench.evaluation import davis_metrics as dm
from sambench.evaluation.video import VideoObjectEvaluator, score_sequence
from sambench.structures import Batch, Prediction, Sample


def box(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


# --------------------------------------------------------------------------- per-frame measures


def test_region_similarity_by_hand():
    gt = box(4, 6, (1, 3), (1, 3))  # 4 px
    pred = box(4, 6, (1, 3), (2, 4))  # 4 px, 2 shared
    assert dm.region_similarity(pred, gt) == pytest.approx(2 / 6)
    assert dm.region_similarity(np.zeros((4, 6)), np.zeros((4, 6))) == 1.0  # empty union
    assert dm.region_similarity(np.zeros((4, 6)), gt) == 0.0


def test_boundary_map_by_hand():
    mask = box(4, 4, (1, 3), (1, 3))
    # a pixel differing from its right, lower or lower-right neighbour; last column: lower only,
    # last row: right only; the square's boundary is offset half a pixel towards the origin
    expected = np.array([
        [1, 1, 1, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
    ], bool)
    np.testing.assert_array_equal(dm.boundary_map(mask), expected)
    # a mask touching the last row and column: the last row compares with the right neighbour,
    # the last column with the lower one ((0,2) differs from (1,2) below), the corner is never boundary
    corner = box(3, 3, (1, 3), (1, 3))
    np.testing.assert_array_equal(dm.boundary_map(corner), np.array([
        [1, 1, 1],
        [1, 0, 0],
        [1, 0, 0],
    ], bool))
    full = np.ones((3, 3), bool)
    np.testing.assert_array_equal(dm.boundary_map(full), np.zeros((3, 3), bool))


def test_disk_and_tolerance():
    np.testing.assert_array_equal(dm.disk(1), np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool))
    d2 = dm.disk(2)
    assert d2.shape == (5, 5) and d2.sum() == 13  # x² + y² <= 4: 1 + 3 + 5 + 3 + 1
    assert dm.boundary_tolerance((4, 6)) == 1  # ceil(0.008 * 7.2)
    assert dm.boundary_tolerance((100, 100)) == 2  # ceil(1.13)
    assert dm.boundary_tolerance((480, 854)) == 8  # ceil(7.84): DAVIS 480p


def test_boundary_f_measure_by_hand():
    gt = box(4, 6, (1, 3), (1, 3))
    pred = box(4, 6, (1, 3), (3, 5))  # the same square two columns to the right
    # GT boundary: (0,0) (0,1) (0,2) (1,0) (1,2) (2,0) (2,1) (2,2); predicted: the same shifted
    # by two columns. Tolerance 1 (a plus-shaped disk). Predicted pixels within 1 of the GT
    # boundary: (0,2) (0,3) (1,2) (2,2) (2,3) -> precision 5/8; GT pixels within 1 of the
    # predicted boundary: (0,1) (0,2) (1,2) (2,1) (2,2) -> recall 5/8; F = 5/8.
    assert dm.boundary_f_measure(pred, gt) == pytest.approx(5 / 8)
    assert dm.boundary_f_measure(gt, gt) == 1.0
    empty = np.zeros_like(gt)
    assert dm.boundary_f_measure(empty, gt) == 0.0  # P = 1, R = 0
    assert dm.boundary_f_measure(gt, empty) == 0.0  # P = 0, R = 1
    assert dm.boundary_f_measure(empty, empty) == 1.0  # P = R = 1
    # far apart: no match at all -> P = R = 0 -> F = 0
    assert dm.boundary_f_measure(box(20, 20, (0, 3), (0, 3)), box(20, 20, (12, 16), (12, 16))) == 0.0


def test_dilation_equals_opencv_with_the_disk():
    cv2 = pytest.importorskip("cv2")
    from scipy import ndimage

    rng = np.random.default_rng(0)
    boundary = rng.random((37, 53)) > 0.97
    boundary[0, 0] = boundary[-1, -1] = boundary[0, -1] = True  # at the borders too
    for radius in (1, 2, 3):
        kernel = dm.disk(radius)
        ours = ndimage.binary_dilation(boundary, structure=kernel)
        theirs = cv2.dilate(boundary.astype(np.uint8), kernel.astype(np.uint8)) > 0
        np.testing.assert_array_equal(ours, theirs)


# --------------------------------------------------------------------------- statistics


def test_statistics_by_hand():
    values = [1, 1, 1, 0.5, 0.5, 0.2, 0.2, 0]
    # edges round(linspace(1, 8, 5) + 1e-10) - 1 = round([1, 2.75, 4.5, 6.25, 8]) - 1 = [0, 2, 4, 5, 7]
    assert dm.decay_bins(8) == [(0, 2), (2, 4), (4, 5), (5, 7)]
    mean, recall, decay = dm.statistics(values)
    assert mean == pytest.approx(4.4 / 8)
    assert recall == pytest.approx(3 / 8)  # 0.5 is not above 0.5
    assert decay == pytest.approx(1.0 - 0.4 / 3)  # first bin [1, 1, 1], last bin [0.2, 0.2, 0]
    # 3 frames: edges [0, 1, 1, 2, 2]; bins share frames
    assert dm.decay_bins(3) == [(0, 1), (1, 1), (1, 2), (2, 2)]
    assert dm.statistics([1.0, 0.5, 0.0])[2] == pytest.approx(0.75)
    assert dm.statistics([0.7]) == (pytest.approx(0.7), 1.0, 0.0)
    assert dm.statistics([1.0, np.nan, 0.0])[0] == pytest.approx(0.5)  # NaN-ignoring mean


def test_decay_bins_follow_the_toolkit_formula():
    for count in range(1, 256):
        edges = (np.round(np.linspace(1, count, 5) + 1e-10) - 1).astype(np.uint8)
        assert dm.decay_bins(count) == [(int(edges[i]), int(edges[i + 1])) for i in range(4)], count


# --------------------------------------------------------------------------- protocol


def sequence(t: int, h: int, w: int, objects: dict[int, list[tuple]]) -> np.ndarray:
    """T×H×W uint8 labels; objects[k][t] = (rows, cols) of object k in frame t."""
    labels = np.zeros((t, h, w), np.uint8)
    for k, boxes in objects.items():
        for frame, (rows, cols) in enumerate(boxes):
            labels[frame][box(h, w, rows, cols)] = k
    return labels


def test_first_and_last_frame_dropped_and_void_counts_as_background():
    truth = sequence(4, 6, 8, {1: [((0, 2), (0, 2))] * 4})
    truth[:, 4:6, 0:2] = 255  # void: 4 px per frame
    prediction = np.zeros_like(truth)
    prediction[1:3, 0:2, 0:2] = 1  # object right in frames 1, 2
    prediction[1, 4:6, 0:2] = 1  # frame 1 also covers the void region: false positives
    (obj,) = score_sequence(truth, prediction)
    assert obj["object"] == 1 and len(obj["J"]) == 2  # frames 1 and 2 only
    assert obj["J"] == [pytest.approx(4 / 8), 1.0]
    # frames 0 and 3 (given / last) do not count, whatever the prediction holds there
    prediction[0] = prediction[3] = 0
    assert score_sequence(truth, prediction)[0]["J"] == obj["J"]


def test_objects_come_from_the_first_frame_without_void():
    truth = sequence(3, 5, 5, {1: [((0, 1), (0, 1))] * 3, 2: [((3, 5), (3, 5))] * 3})
    truth[0, 2, 2] = 255  # void in frame 0 is not an object id
    objects = score_sequence(truth, truth.copy())
    assert [o["object"] for o in objects] == [1, 2]
    # an id missing in frame 0 below the max still counts as an object (1..max)
    only_two = truth.copy()
    only_two[only_two == 1] = 0
    assert [o["object"] for o in score_sequence(only_two, only_two)] == [1, 2]


def test_id_above_the_object_count_is_an_error_in_scored_frames_only():
    truth = sequence(4, 5, 5, {1: [((0, 2), (0, 2))] * 4, 2: [((3, 5), (3, 5))] * 4})
    prediction = truth.copy()
    prediction[2, 2, 2] = 3
    with pytest.raises(ValueError, match="object id 3.*2 object"):
        score_sequence(truth, prediction, "seq")
    prediction = truth.copy()
    prediction[3, 2, 2] = 3  # the last frame is not read
    score_sequence(truth, prediction)
    with pytest.raises(ValueError, match="do not match"):
        score_sequence(truth, prediction[:, :4])


def test_object_missing_from_the_prediction_scores_zero():
    truth = sequence(4, 6, 6, {1: [((0, 2), (0, 2))] * 4, 2: [((3, 5), (3, 5))] * 4})
    prediction = np.where(truth == 2, 0, truth).astype(np.uint8)
    one, two = score_sequence(truth, prediction)
    assert one["J"] == [1.0, 1.0] and one["F"] == [1.0, 1.0]
    assert two["J"] == [0.0, 0.0] and two["F"] == [0.0, 0.0]


# --------------------------------------------------------------------------- evaluator


def video_pair(index: int, name: str, truth: np.ndarray, prediction: np.ndarray, fallbacks: int = 0):
    t, h, w = truth.shape
    sample = Sample(
        index=index, image=np.zeros((h, w, 3), np.uint8), frames=[np.zeros((h, w, 3), np.uint8)] * t,
        frame_labels=torch.from_numpy(truth), meta={"sequence": name, "name": name},
    )
    return sample, Prediction(index=index, frame_labels=torch.from_numpy(prediction), fallbacks=fallbacks)


def two_sequences():
    rng = np.random.default_rng(3)
    # "walk": 2 objects moving right, 7 frames; prediction lags one column and loses object 2 late
    walk = sequence(7, 12, 16, {
        1: [((1, 5), (t, t + 4)) for t in range(7)],
        2: [((7, 11), (t + 2, t + 6)) for t in range(7)],
    })
    walk[:, 11, 0:3] = 255
    walk_pred = sequence(7, 12, 16, {
        1: [((1, 5), (max(t - 1, 0), max(t - 1, 0) + 4)) for t in range(7)],
        2: [((7, 11), (t + 2, t + 6)) if t < 4 else ((0, 0), (0, 0)) for t in range(7)],
    })
    # "blob": 1 object, 5 frames, noisy prediction
    blob = sequence(5, 10, 10, {1: [((2, 8), (2, 8))] * 5})
    blob_pred = ((blob == 1) ^ (rng.random(blob.shape) > 0.85)).astype(np.uint8)
    return [video_pair(0, "walk", walk, walk_pred, fallbacks=1), video_pair(1, "blob", blob, blob_pred, fallbacks=2)]


def expected_metrics(pairs) -> dict:
    """Directly from the per-frame measures: every object of every sequence, frames 1..T-2."""
    per_object, stats = {}, {"J": [], "F": []}
    for sample, pred in pairs:
        truth = sample.frame_labels.numpy()
        predicted = pred.frame_labels.numpy()
        count = int(np.where(truth[0] == 255, 0, truth[0]).max())
        for k in range(1, count + 1):
            for measure, fn in (("J", dm.region_similarity), ("F", dm.boundary_f_measure)):
                values = [fn(predicted[t] == k, np.where(truth[t] == 255, 0, truth[t]) == k) for t in range(1, len(truth) - 1)]
                stats[measure].append(dm.statistics(values))
            per_object[f"{sample.meta['sequence']}_{k}"] = (stats["J"][-1][0] * 100, stats["F"][-1][0] * 100)
    j = np.array(stats["J"]) * 100
    f = np.array(stats["F"]) * 100
    return {
        "J&F": (j[:, 0].mean() + f[:, 0].mean()) / 2,
        "J-Mean": j[:, 0].mean(), "J-Recall": j[:, 1].mean(), "J-Decay": j[:, 2].mean(),
        "F-Mean": f[:, 0].mean(), "F-Recall": f[:, 1].mean(), "F-Decay": f[:, 2].mean(),
        "per_object": per_object,
    }


def check_result(result: dict, pairs) -> None:
    expected = expected_metrics(pairs)
    for key in ("J&F", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"):
        assert result[key] == pytest.approx(expected[key]), key
    assert result["num_sequences"] == 2 and result["num_objects"] == 3 and result["fallbacks"] == 3
    assert list(result["per_object"]) == ["walk_1", "walk_2", "blob_1"]
    for name, (jm, fm) in expected["per_object"].items():
        assert result["per_object"][name] == {"J-Mean": pytest.approx(jm), "F-Mean": pytest.approx(fm)}
    walk = result["per_sequence"]["walk"]
    assert walk["J-Mean"] == pytest.approx((expected["per_object"]["walk_1"][0] + expected["per_object"]["walk_2"][0]) / 2)
    assert result["per_sequence"]["blob"]["F-Mean"] == pytest.approx(expected["per_object"]["blob_1"][1])


def test_evaluator_equals_a_direct_computation():
    pairs = two_sequences()
    evaluator = VideoObjectEvaluator(class_names=None)
    evaluator.process(Batch([p[0] for p in pairs]), [p[1] for p in pairs])
    result = evaluator.compute()
    check_result(result, pairs)
    assert 0 < result["J-Mean"] < 100 and result["J-Decay"] > 0  # object 2 of walk is lost late
    evaluator.reset()
    evaluator.process(Batch([p[0] for p in pairs]), [p[1] for p in pairs])
    assert evaluator.compute()["J&F"] == result["J&F"]


def test_two_ranks_with_sampler_padding_equal_one_rank(monkeypatch):
    pairs = two_sequences()
    rank0, rank1 = VideoObjectEvaluator(), VideoObjectEvaluator()
    rank0.process(Batch([pairs[0][0]]), [pairs[0][1]])
    # rank 1 holds sequence 1 and the sampler's padding repeat of sequence 0
    rank1.process(Batch([pairs[1][0], pairs[0][0]]), [pairs[1][1], pairs[0][1]])
    monkeypatch.setattr(evaluation_base, "all_gather_objects", lambda obj: [rank0.records, rank1.records])
    check_result(rank0.compute(), pairs)
    check_result(rank1.compute(), pairs)


def test_prediction_without_frame_labels_is_refused():
    sample, _ = two_sequences()[0]
    with pytest.raises(ValueError, match="no frame_labels"):
        VideoObjectEvaluator().record(sample, Prediction(index=0))
