"""COCO-format instance annotations: loading, validation and mask decoding.

Shared by the COCO, LVIS and RefCOCO adapters. A segmentation is either a list of polygons
(``[[x1, y1, x2, y2, ...], ...]``) or an RLE dict ``{"size": [h, w], "counts": ...}`` whose
counts are a list of ints (uncompressed, as in crowd ground truth) or a string (compressed).
pycocotools crashes or silently returns empty masks on malformed polygons, so every
segmentation is checked with :func:`segmentation_problem` before :func:`decode_segmentation`.
"""

from __future__ import annotations

import json
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sambench.errors import DatasetError

#: Top-level keys every COCO instances json must have.
INSTANCES_KEYS = ("images", "annotations", "categories")


def load_coco_json(path: Path, required_keys: tuple[str, ...] = INSTANCES_KEYS) -> dict[str, Any]:
    """Read a COCO json; one-line DatasetErrors for a missing file, bad json or missing keys."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {path} (expected a COCO instances json)") from None
    except IsADirectoryError:
        raise DatasetError(f"annotation file {path} is a folder; expected a COCO instances json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"annotation file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {path} holds a {type(data).__name__}; expected a JSON object")
    missing = [key for key in required_keys if key not in data]
    if missing:
        raise DatasetError(
            f"annotation file {path} lacks key(s) {', '.join(missing)}; "
            f"expected a COCO instances json with {', '.join(required_keys)}"
        )
    for key in required_keys:
        if not isinstance(data[key], list):
            raise DatasetError(f"annotation file {path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


def contiguous_categories(categories: list[dict[str, Any]], source: Path) -> tuple[dict[int, int], list[str]]:
    """Map COCO category ids (sorted) to 0..K-1; return ``(id -> index, names by index)``."""
    by_id: dict[int, str] = {}
    for category in categories:
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DatasetError(f"annotation file {source}: every category needs an 'id' and a 'name'")
        if category["id"] in by_id:
            raise DatasetError(f"annotation file {source}: category id {category['id']} appears twice")
        by_id[category["id"]] = str(category["name"])
    ids = sorted(by_id)
    return {cat_id: index for index, cat_id in enumerate(ids)}, [by_id[cat_id] for cat_id in ids]


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)


def _polygon_problem(polygons: list) -> str | None:
    if not polygons:
        return "empty polygon list"
    for polygon in polygons:
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            return "a polygon is not a list of numbers"
        if len(polygon) < 6 or len(polygon) % 2:
            return f"a polygon has {len(polygon)} coordinates; expected an even number >= 6"
    return None


def _rle_problem(rle: dict) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        return "RLE 'size' must be [height, width] positive ints"
    if isinstance(counts, str):
        return None if counts else "RLE 'counts' is an empty string"
    if not isinstance(counts, list) or not all(isinstance(v, int) and v >= 0 for v in counts):
        return "RLE 'counts' must be a list of non-negative ints or a string"
    if sum(counts) != size[0] * size[1]:
        return f"RLE counts sum to {sum(counts)}; expected height*width = {size[0] * size[1]}"
    return None


def segmentation_problem(segmentation: Any) -> str | None:
    """Why a COCO segmentation cannot be decoded, or None when it is valid."""
    if isinstance(segmentation, list):
        return _polygon_problem(segmentation)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation)
    return f"segmentation is a {type(segmentation).__name__}; expected a polygon list or an RLE dict"


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Decode a validated segmentation to an H×W bool mask.

    Polygons are rasterised at ``height``×``width``; an RLE carries its own size, so check the
    result's shape against the image.
    """
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def bbox_problem(bbox: Any) -> str | None:
    """Why a COCO ``[x, y, width, height]`` box is unusable, or None."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return "bbox must be [x, y, width, height] numbers"
    if bbox[2] < 0 or bbox[3] < 0:
        return "bbox has a negative width or height"
    return None


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """N×4 ``[x, y, w, h]`` -> N×4 ``[x1, y1, x2, y2]`` (same dtype)."""
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], axis=-1)


def annotation_mask(ann: dict[str, Any], image_info: dict[str, Any], image_path: Path, size: tuple[int, int], ann_path: Path) -> np.ndarray:
    """H×W bool mask of a COCO annotation, checked against the size (H, W) of the image read from
    ``image_path``; a DatasetError names the annotation file and the image when they disagree."""
    height = int(image_info.get("height") or size[0])
    width = int(image_info.get("width") or size[1])
    mask = decode_segmentation(ann["segmentation"], height, width)
    if mask.shape != size:
        raise DatasetError(
            f"annotation {ann.get('id')} in {ann_path} has a {mask.shape[0]}x{mask.shape[1]} mask "
            f"but image {image_path} is {size[0]}x{size[1]}"
        )
    return mask


def instance_tensors(
    anns: list[dict[str, Any]], image_info: dict[str, Any], image_path: Path, size: tuple[int, int],
    ann_path: Path, category_index: dict[int, int],
) -> dict[str, torch.Tensor]:
    """A COCO image's annotations as Sample fields: ``masks`` N×H×W bool, ``boxes`` N×4 float32
    xyxy (from ``bbox``), ``class_ids`` N int64 (contiguous, via ``category_index``)."""
    masks = np.stack([annotation_mask(ann, image_info, image_path, size, ann_path) for ann in anns])
    boxes = xywh_to_xyxy(np.array([ann["bbox"] for ann in anns], dtype=np.float32))
    class_ids = np.array([category_index[ann["category_id"]] for ann in anns], dtype=np.int64)
    return {"masks": torch.from_numpy(masks), "boxes": torch.from_numpy(boxes), "class_ids": torch.from_numpy(class_ids)}
