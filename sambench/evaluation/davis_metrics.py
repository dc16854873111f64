"""The DAVIS 2017 measures, written from the definitions of the official toolkit
(davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py`` and ``utils.py``):

- region similarity J: the Jaccard index of a predicted and a ground-truth mask (1 when both are
  empty);
- boundary F: the F-measure of boundary precision and recall, boundaries drawn by
  :func:`boundary_map` and matched within ``ceil(0.008 × image diagonal)`` pixels (a disk);
- per object over its frames: mean M, recall R (fraction of frames above 0.5) and decay D (mean
  of the first quarter minus mean of the last quarter, :func:`decay`).

The semi-supervised protocol passes no void mask to J and F, so void pixels are not excluded:
the caller sets them to background in the ground truth.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

#: Boundary tolerance as a fraction of the image diagonal (the toolkit's ``bound_th``).
BOUNDARY_TOLERANCE = 0.008
#: Frames above this score count for the recall R.
RECALL_THRESHOLD = 0.5
DECAY_BINS = 4


def region_similarity(prediction: np.ndarray, truth: np.ndarray) -> float:
    """J of two H×W masks: |P∩G| / |P∪G|, 1.0 when the union is empty."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction is {prediction.shape} but the ground truth is {truth.shape}")
    union = int((prediction | truth).sum())
    return int((prediction & truth).sum()) / union if union else 1.0


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """H×W bool mask -> H×W bool one-pixel boundary (the toolkit's ``seg2bmap``, same size).

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour
    (pixels outside the image count as background); in the last row only the right neighbour
    counts, in the last column only the lower one, and the bottom-right pixel is never a
    boundary.
    """
    mask = np.asarray(mask, dtype=bool)
    right = np.zeros_like(mask)
    below = np.zeros_like(mask)
    below_right = np.zeros_like(mask)
    right[:, :-1] = mask[:, 1:]
    below[:-1, :] = mask[1:, :]
    below_right[:-1, :-1] = mask[1:, 1:]
    boundary = (mask ^ right) | (mask ^ below) | (mask ^ below_right)
    boundary[-1, :] = mask[-1, :] ^ right[-1, :]
    boundary[:, -1] = mask[:, -1] ^ below[:, -1]
    boundary[-1, -1] = False
    return boundary


def disk(radius: int) -> np.ndarray:
    """(2r+1)×(2r+1) bool disk: x² + y² <= r² (scikit-image's ``morphology.disk``)."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius**2


def boundary_tolerance(size: tuple[int, int], tolerance: float = BOUNDARY_TOLERANCE) -> int:
    """Match distance in pixels: ``tolerance`` itself when >= 1, else ceil(tolerance × ||(H, W)||)."""
    return int(tolerance) if tolerance >= 1 else int(math.ceil(tolerance * math.hypot(*size)))


def boundary_f_measure(prediction: np.ndarray, truth: np.ndarray, tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """F of two H×W masks' boundaries (the toolkit's ``f_measure``).

    Precision = predicted boundary pixels within the tolerance disk of a true boundary pixel /
    predicted boundary pixels; recall the other way round. No predicted boundary: P = 1, R = 0
    (R = 1 too if the truth has none); a predicted boundary but none true: P = 0, R = 1.
    F = 2PR / (P + R), 0 when P + R = 0.
    """
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction is {prediction.shape} but the ground truth is {truth.shape}")
    predicted_boundary, true_boundary = boundary_map(prediction), boundary_map(truth)
    n_predicted, n_true = int(predicted_boundary.sum()), int(true_boundary.sum())
    if n_predicted == 0 or n_true == 0:
        precision = 0.0 if n_predicted else 1.0
        recall = 0.0 if n_true else 1.0
    else:
        structure = disk(boundary_tolerance(prediction.shape, tolerance))
        # binary dilation by a symmetric structuring element, zero outside the image (= cv2.dilate)
        predicted_near = ndimage.binary_dilation(predicted_boundary, structure=structure)
        true_near = ndimage.binary_dilation(true_boundary, structure=structure)
        precision = int((predicted_boundary & true_near).sum()) / n_predicted
        recall = int((true_boundary & predicted_near).sum()) / n_true
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def decay_bins(count: int) -> list[tuple[int, int]]:
    """The toolkit's 4 decay bins over ``count`` frames: inclusive (first, last) positions.

    Edges = round(linspace(1, count, 5) + 1e-10) - 1 stored as uint8 (the toolkit's cast: they
    wrap past 255 frames, as does the ``last + 1`` slice end); bin i = edges[i] ..
    edges[i + 1], so neighbouring bins share their edge frame.
    """
    edges = [(int(round(x + 1e-10)) - 1) % 256 for x in np.linspace(1, count, DECAY_BINS + 1)]
    return [(edges[i], edges[i + 1]) for i in range(DECAY_BINS)]


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # an empty list is NaN, as the toolkit
        return float(np.nanmean(values)) if values.size else float("nan")


def decay(values) -> float:
    """D = mean of the first bin - mean of the last bin (:func:`decay_bins`)."""
    values = np.asarray(values, dtype=np.float64)
    bins = [values[first:(last + 1) % 256] for first, last in decay_bins(len(values))]
    return _nanmean(bins[0]) - _nanmean(bins[-1])


def statistics(values) -> tuple[float, float, float]:
    """(M, R, D) of one object's per-frame scores: NaN-ignoring mean, fraction > 0.5, decay."""
    values = np.asarray(values, dtype=np.float64)
    return _nanmean(values), _nanmean(values > RECALL_THRESHOLD), decay(values)
