"""Visual prompts for open-vocabulary instance recognition.

- Evaluation: one prompt per GT instance, the GT box (``box``) or the point farthest from the
  mask boundary (``point``, the paper's ``*`` rows); or an external detector's boxes
  (``detections``, a COCO-results json).
- Training (CLIP2SAM), as the official ``OVSAMDataPreprocessor`` (``use_point_det``): GT
  instances repeated to at least ``num`` and truncated to ``num``, shuffled; each gets one
  uniformly random foreground pixel as integer (x, y) pixel indices (SAM's prompt encoder adds
  the half-pixel shift); the first ``num // 2 + 1`` (:func:`num_box_prompts`) are box prompts,
  the rest point prompts.
All coordinates here are in the sample's original pixels unless stated.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from sambench.errors import ConfigError, DatasetError
from .center_points import official_center_points
from sambench.prompts import interior_points, mask_boxes

log = logging.getLogger(__name__)
EVAL_PROMPTS = ("box", "point", "detections")


def check_eval_prompt(prompt: str, detections: str | None) -> None:
    """ConfigError unless ``prompt`` is one of :data:`EVAL_PROMPTS` and detections have a file."""
    if prompt not in EVAL_PROMPTS:
        raise ConfigError(f"unknown method.prompt '{prompt}'; valid: {', '.join(EVAL_PROMPTS)}")
    if prompt == "detections" and not detections:
        raise ConfigError("method.prompt=detections needs method.detections=<COCO results json of a detector's boxes>")


def gt_prompts(sample, mode: str) -> dict[str, torch.Tensor]:
    """Keyword prompts (``boxes`` N×4 xyxy, or ``points`` N×1×2 + ``point_labels`` N×1) for the
    sample's N GT instances."""
    if mode == "box":
        return {"boxes": sample.boxes if sample.boxes is not None else mask_boxes(sample.masks)}
    if mode == "point":
        points = interior_points(sample.masks)
        return {"points": points, "point_labels": torch.ones(points.shape[:2], dtype=torch.long)}
    raise ConfigError(f"unknown method.prompt '{mode}'; valid: {', '.join(EVAL_PROMPTS)}")


def official_point_prompts(sample, input_size: tuple[int, int], keeps_aspect: bool = True) -> dict[str, torch.Tensor]:
    """The official evaluation points (:func:`~methods.ovsam.center_points.official_center_points`,
    integer pixels of the 1024 frame of size ``input_size``) as original-pixel ``points`` N×1×2 +
    ``point_labels`` N×1, for SAM wrappers that scale original prompts by (new / old) per axis
    (the round trip is exact to float rounding)."""
    points = official_center_points(sample.masks, input_size, keeps_aspect).double()
    h, w = sample.size
    points = (points / torch.tensor([input_size[1] / w, input_size[0] / h], dtype=torch.double)).float()
    return {"points": points, "point_labels": torch.ones(points.shape[:2], dtype=torch.long)}


def random_foreground_points(masks: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """masks N×H×W bool -> N×2 (x, y) integer pixel indices of one uniformly drawn foreground
    pixel each (as the official code: SAM's prompt encoder adds the half-pixel shift); the
    image centre for an empty mask (training masks have ≥ ``min_mask_area`` pixels)."""
    points = torch.zeros(masks.shape[0], 2)
    for i, mask in enumerate(masks):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):
            j = int(torch.randint(len(ys), (1,), generator=generator))
            points[i] = torch.tensor([float(xs[j]), float(ys[j])])
        else:
            points[i] = torch.tensor([mask.shape[1] / 2, mask.shape[0] / 2])
    return points


def training_prompt_indices(num_instances: int, num: int = 40) -> torch.Tensor:
    """Instance index per prompt: ``0..n−1`` repeated until there are at least ``num``, cut to ``num``."""
    if num_instances < 1:
        raise ValueError("training prompts need at least one instance")
    repeats = -(-num // num_instances)
    return torch.arange(num_instances).repeat(repeats)[:num]


def num_box_prompts(num: int) -> int:
    """Box prompts among ``num`` training prompts: ``min(num, num // 2 + 1)`` (the official
    ``arange(2).repeat_interleave(num // 2 + 1)[:num]`` box/point flags; 40 -> 21 boxes, 19 points)."""
    return min(num, num // 2 + 1)


class DetectionBoxes:
    """An external detector's boxes (COCO results json: ``image_id``, ``bbox`` xywh,
    ``score``, optional ``category_id``), grouped per image, best first.

    Args:
        path: the json file.
        score_threshold: drop boxes scoring below it.
        max_per_image: keep the best ones only.
    """

    def __init__(self, path: str, score_threshold: float = 0.0, max_per_image: int = 100):
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"method.detections: file not found: {file} (a COCO results json of a detector's boxes)")
        try:
            entries = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"cannot read detections {file}: {exc}") from None
        if not isinstance(entries, list):
            raise DatasetError(f"detections {file}: expected a json list of COCO results, got {type(entries).__name__}")
        per_image: dict = defaultdict(list)
        for k, det in enumerate(entries):
            if not isinstance(det, dict) or "image_id" not in det or "score" not in det or \
                    not (isinstance(det.get("bbox"), list) and len(det["bbox"]) == 4):
                raise DatasetError(f"detections {file}: entry {k} needs 'image_id', 'score' and a 4-number 'bbox' (xywh)")
            if float(det["score"]) >= score_threshold:
                x, y, w, h = (float(v) for v in det["bbox"])
                per_image[det["image_id"]].append((float(det["score"]), [x, y, x + w, y + h]))
        self.path, self.max_per_image = file, max_per_image
        self.per_image = {key: sorted(dets, key=lambda d: -d[0])[:max_per_image] for key, dets in per_image.items()}
        log.info("detections: %d boxes on %d images from %s", sum(map(len, self.per_image.values())), len(self.per_image), file)

    def __call__(self, image_id) -> tuple[torch.Tensor, torch.Tensor]:
        """(boxes K×4 xyxy in original pixels, scores K) of one image (K may be 0)."""
        dets = self.per_image.get(image_id, [])
        if not dets:
            return torch.zeros(0, 4), torch.zeros(0)
        return torch.tensor([box for _, box in dets], dtype=torch.float32), torch.tensor([s for s, _ in dets])
