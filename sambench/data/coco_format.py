"""COCO-format instance annotations: loading, validation and mask decoding.

Shared by the COCO, LVIS and RefCOCO adapters. A segmentation is either a list of polygons
(``[[x1, y1, x2, y2, ...], ...]``) or an RLE dict ``{"size": [h, w], "counts": ...}`` whose
counts are a list of ints (uncompressed, as in crowd ground truth) or a string (compressed).

pycocotools trusts its input: huge polygon coordinates crash the process or allocate gigabytes,
a corrupt compressed RLE reads or writes past its buffers, an odd-length polygon silently gives
an empty mask. So :func:`load_coco_json` checks every record before anything is decoded:

- **refused** (DatasetError naming the file and the record): a file that is missing, a folder,
  not UTF-8 JSON, not an object, or lacks ``images``/``annotations``/``categories``; records of the
  wrong type; non-int ids; duplicate image, annotation or category ids (two images with one id
  would merge their annotations); an annotation whose ``category_id`` is not in ``categories``;
  an image ``width``/``height`` that is not a positive integer;
- **skipped with one warning line that counts them** (the first of each kind is quoted): an
  annotation whose ``image_id`` is not in ``images``; an invalid segmentation (polygon not an
  even list of >= 6 finite numbers, or with coordinates beyond the image by more than
  :data:`POLYGON_MARGIN` of its size; RLE whose ``size`` is not the image's, whose counts do not
  cover h·w pixels, or whose compressed string is corrupt); an invalid ``bbox``, ``area`` or
  ``iscrowd``; a box wholly outside its image.

:func:`decode_segmentation` repeats the segmentation check against the size it rasterises at,
so no caller can hand pycocotools a bad input. COCO ``width``/``height`` and coordinates refer to
the pixels as the image is read (upright, EXIF orientation applied); :func:`read_coco_image`
reads the stored pixels instead when the json's width/height are those of the stored pixels and
not of the upright ones (see :mod:`sambench.data.base`).
"""

from __future__ import annotations

import json
import logging
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sambench.data.base import read_image, size_mismatch_hint
from sambench.errors import DatasetError

logger = logging.getLogger(__name__)

#: Top-level keys every COCO instances json must have.
INSTANCES_KEYS = ("images", "annotations", "categories")
#: How far (a fraction of the image side, plus one pixel) polygon and box coordinates may lie
#: outside the image; pycocotools clips what lies outside. Real COCO/LVIS polygons stay inside.
POLYGON_MARGIN = 0.1
#: Characters of a compressed COCO RLE string (6-bit groups offset by 48: '0'..'o').
_RLE_CHARS = range(48, 48 + 64)


def load_coco_json(
    path: Path, required_keys: tuple[str, ...] = INSTANCES_KEYS, *, skipped: dict | None = None,
) -> dict[str, Any]:
    """Read a COCO json; one-line DatasetErrors for a missing file, bad json or missing keys.

    With the instances keys (the default), the records are validated and annotations that
    cannot be used are removed from ``data["annotations"]`` (see the module docstring); when
    ``skipped`` is a dict it receives ``{annotation id: (kind, reason)}`` for them, kind being
    ``"orphan"`` (image_id not in images), ``"invalid"`` or ``"outside"`` (box outside the image).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {path} (expected a COCO instances json)") from None
    except IsADirectoryError:
        raise DatasetError(f"annotation file {path} is a folder; expected a COCO instances json") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"annotation file {path} is not UTF-8 text ({exc}); expected a COCO instances json") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"annotation file {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise DatasetError(f"annotation file {path} is nested too deeply to be a COCO instances json") from None
    except OSError as exc:
        raise DatasetError(f"cannot read annotation file {path} ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"annotation file {path} holds a JSON {type(data).__name__}; expected a JSON object")
    missing = [key for key in required_keys if key not in data]
    if missing:
        raise DatasetError(
            f"annotation file {path} lacks key(s) {', '.join(missing)}; "
            f"expected a COCO instances json with {', '.join(required_keys)}"
        )
    for key in required_keys:
        if not isinstance(data[key], list):
            raise DatasetError(f"annotation file {path}: '{key}' must be a list, got {type(data[key]).__name__}")
    if all(key in required_keys for key in INSTANCES_KEYS):
        check_instances(data, path, skipped)
    return data


# --------------------------------------------------------------------------- record checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _record_id(record: Any, position: int, kind: str) -> str:
    if isinstance(record, dict) and _is_int(record.get("id")):
        return f"{kind} {record['id']}"
    return f"{kind} #{position}"


def image_size(image: dict[str, Any]) -> tuple[int, int] | None:
    """(height, width) of a validated image record, or None when it does not state both."""
    height, width = image.get("height"), image.get("width")
    if height is None or width is None:
        return None
    return int(height), int(width)


def _check_categories(categories: list, path: Path) -> set[int]:
    ids: set[int] = set()
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DatasetError(f"annotation file {path}: category #{position} needs an 'id' and a 'name'")
        if not isinstance(category["name"], str) or not category["name"].strip():
            raise DatasetError(
                f"annotation file {path}: category #{position} has name {_show(category['name'])}; expected a non-empty string"
            )
        if not _is_int(category["id"]):
            raise DatasetError(
                f"annotation file {path}: category #{position} has id {_show(category['id'])}; expected an int"
            )
        if category["id"] in ids:
            raise DatasetError(f"annotation file {path}: category id {category['id']} appears twice")
        ids.add(category["id"])
    return ids


def _check_images(images: list, path: Path) -> dict[int, dict[str, Any]]:
    by_id: dict[int, dict[str, Any]] = {}
    first_position: dict[int, int] = {}
    for position, image in enumerate(images):
        if not isinstance(image, dict):
            raise DatasetError(f"annotation file {path}: image #{position} is a {type(image).__name__}; expected an object")
        if not _is_int(image.get("id")):
            raise DatasetError(
                f"annotation file {path}: image #{position} has id {_show(image.get('id'))}; expected an int"
            )
        image_id = image["id"]
        if image_id in by_id:
            raise DatasetError(
                f"annotation file {path}: image id {image_id} appears twice (images #{first_position[image_id]} and "
                f"#{position}); expected unique ids (their annotations would be merged)"
            )
        for key in ("height", "width"):
            value = image.get(key)
            if value is None:
                continue
            if not (_is_number(value) and float(value).is_integer() and value >= 1):
                raise DatasetError(
                    f"annotation file {path}: image {image_id} has {key} {_show(value)}; expected a positive integer"
                )
        by_id[image_id] = image
        first_position[image_id] = position
    return by_id


def check_instances(data: dict[str, Any], path: Path, skipped: dict | None = None) -> None:
    """Validate a COCO instances dict in place (see the module docstring): refuse broken or
    duplicate records, drop unusable annotations with one warning line that counts them."""
    category_ids = _check_categories(data["categories"], path)
    images = _check_images(data["images"], path)
    ann_ids: dict[int, int] = {}
    unknown_category: list[str] = []
    kept: list[dict[str, Any]] = []
    problems: dict[str, list[str]] = {"orphan": [], "invalid": [], "outside": []}
    for position, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(
                f"annotation file {path}: annotation #{position} is a {type(ann).__name__}; expected an object"
            )
        name = _record_id(ann, position, "annotation")
        if "id" in ann:
            if not _is_int(ann["id"]):
                raise DatasetError(f"annotation file {path}: annotation #{position} has id {_show(ann['id'])}; expected an int")
            if ann["id"] in ann_ids:
                raise DatasetError(
                    f"annotation file {path}: annotation id {ann['id']} appears twice (annotations "
                    f"#{ann_ids[ann['id']]} and #{position}); expected unique ids"
                )
            ann_ids[ann["id"]] = position
        if not _is_int(ann.get("image_id")):
            raise DatasetError(
                f"annotation file {path}: {name} has image_id {_show(ann.get('image_id'))}; expected the int id of an image"
            )
        if not _is_int(ann.get("category_id")) or ann["category_id"] not in category_ids:
            unknown_category.append(f"{name} has category_id {_show(ann.get('category_id'))}")
            continue
        image = images.get(ann["image_id"])
        if image is None:
            kind, reason = "orphan", f"its image_id {ann['image_id']} is not in 'images'"
            problems[kind].append(f"{name} names image_id {ann['image_id']}")
        else:
            size = image_size(image)
            kind, reason = "invalid", annotation_problem(ann, size)
            if reason is None and size is not None and box_outside(ann["bbox"], *size):
                kind, reason = "outside", f"its bbox {_show(ann['bbox'])} lies wholly outside the {size[0]}x{size[1]} image"
                problems[kind].append(f"{name}: bbox {_show(ann['bbox'])} on a {size[0]}x{size[1]} (HxW) image")
            elif reason is not None:
                problems[kind].append(f"{name}: {reason}")
        if reason is None:
            kept.append(ann)
        elif skipped is not None and "id" in ann:
            skipped[ann["id"]] = (kind, reason)
    if unknown_category:
        raise DatasetError(
            f"annotation file {path}: {unknown_category[0]}, which is not an id in 'categories' "
            f"({len(unknown_category)} annotation(s) like this); expected the id of a listed category"
        )
    total = len(data["annotations"])
    data["annotations"] = kept
    if total > len(kept):
        parts = []
        for key, what in (("orphan", "whose image_id is not in 'images'"),
                          ("invalid", "with an invalid segmentation, bbox, area or iscrowd"),
                          ("outside", "whose box lies wholly outside its image")):
            if problems[key]:
                parts.append(f"{len(problems[key])} {what} (first: {problems[key][0]})")
        logger.warning("%s: skipped %d of %d annotations: %s", path, total - len(kept), total, "; ".join(parts))


def annotation_problem(ann: dict[str, Any], size: tuple[int, int] | None) -> str | None:
    """Why an annotation cannot be used (segmentation, bbox, area, iscrowd), or None; ``size``
    is its image's (height, width) when known (coordinates are checked against it)."""
    problem = segmentation_problem(ann.get("segmentation"), *(size or (None, None)))
    if problem:
        return problem
    problem = bbox_problem(ann.get("bbox"), *(size or (None, None)))
    if problem:
        return problem
    if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
        return f"area {_show(ann['area'])} is not a non-negative number"
    if ann.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
        return f"iscrowd {_show(ann.get('iscrowd'))} is not 0 or 1"
    return None


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


# --------------------------------------------------------------------------- segmentations


def _bounds(height: int | None, width: int | None):
    """(x low, x high, y low, y high) allowed for coordinates, or None when the size is unknown."""
    if height is None or width is None:
        return None
    mx, my = POLYGON_MARGIN * width + 1, POLYGON_MARGIN * height + 1
    return -mx, width + mx, -my, height + my


def _polygon_problem(polygons: list, height: int | None, width: int | None) -> str | None:
    if not polygons:
        return "empty polygon list"
    bounds = _bounds(height, width)
    for polygon in polygons:
        if not isinstance(polygon, list):
            return f"a polygon is a {type(polygon).__name__}; expected a list of numbers [x1, y1, x2, y2, ...]"
        try:
            coords = np.array(polygon)
        except (ValueError, TypeError, OverflowError):
            return "a polygon is not a flat list of numbers"
        if coords.ndim != 1 or coords.dtype.kind not in "iuf":
            return "a polygon is not a flat list of numbers [x1, y1, x2, y2, ...]"
        if len(polygon) < 6 or len(polygon) % 2:
            return f"a polygon has {len(polygon)} coordinates; expected an even number >= 6"
        coords = coords.astype(np.float64)
        if not np.isfinite(coords).all():
            return "a polygon holds a NaN or infinite coordinate"
        if bounds is not None:
            x_low, x_high, y_low, y_high = bounds
            for axis, values, low, high, side in (("x", coords[0::2], x_low, x_high, width),
                                                  ("y", coords[1::2], y_low, y_high, height)):
                outside = (values < low) | (values > high)
                if outside.any():
                    return (
                        f"a polygon has {axis} = {values[outside][0]:.6g}, outside the {height}x{width} (HxW) image "
                        f"({axis} must lie in 0..{side} give or take {POLYGON_MARGIN:.0%} + 1 px)"
                    )
    return None


def compressed_rle_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string, or None when the string is corrupt
    (a character outside '0'..'o', a run cut short at the end, or a negative run)."""
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        code = ord(char) - 48
        if code not in range(64):
            return None
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:  # sign bit of the last 5-bit group
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]  # runs after the first two are stored as differences
        if value < 0:
            return None
        runs.append(value)
        value = shift = 0
    return runs if shift == 0 else None


def _rle_problem(rle: dict, height: int | None, width: int | None) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        return f"RLE 'size' is {_show(size)}; expected [height, width] positive ints"
    if height is not None and width is not None and size != [height, width]:
        return f"RLE 'size' {size} is not the image's [height, width] [{height}, {width}]"
    pixels = size[0] * size[1]
    if isinstance(counts, str):
        if not counts:
            return "RLE 'counts' is an empty string"
        runs = compressed_rle_counts(counts)
        if runs is None:
            return "RLE 'counts' is not a valid compressed COCO RLE string"
    elif isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts):
        runs = counts
    else:
        return "RLE 'counts' must be a list of non-negative ints or a compressed RLE string"
    if sum(runs) != pixels:
        return f"RLE counts cover {sum(runs)} pixels; expected height*width = {size[0]}*{size[1]} = {pixels}"
    return None


def segmentation_problem(segmentation: Any, height: int | None = None, width: int | None = None) -> str | None:
    """Why a COCO segmentation cannot be decoded, or None when it is valid; with the image's
    ``height`` and ``width``, polygon coordinates and the RLE size are checked against them."""
    if isinstance(segmentation, list):
        return _polygon_problem(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _rle_problem(segmentation, height, width)
    return f"segmentation is a {type(segmentation).__name__}; expected a polygon list or an RLE dict"


def decode_segmentation(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """Decode a segmentation to an H×W bool mask (polygons rasterised at ``height``×``width``);
    it is checked first, so pycocotools never sees a malformed one (DatasetError)."""
    problem = segmentation_problem(segmentation, height, width)
    if problem:
        raise DatasetError(f"cannot decode a segmentation at {height}x{width}: {problem}")
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


def bbox_problem(bbox: Any, height: int | None = None, width: int | None = None) -> str | None:
    """Why a COCO ``[x, y, width, height]`` box is unusable, or None; with the image size, its
    corners must lie within the image plus :data:`POLYGON_MARGIN` (a box wholly outside is
    :func:`box_outside`)."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return f"bbox {_show(bbox)} is not [x, y, width, height] numbers"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {_show(bbox)} has a negative width or height"
    bounds = _bounds(height, width)
    if bounds is not None and not box_outside(bbox, height, width):
        x_low, x_high, y_low, y_high = bounds
        x, y, w, h = (float(v) for v in bbox)
        if x < x_low or x + w > x_high or y < y_low or y + h > y_high:
            return f"bbox {_show(bbox)} reaches far beyond the {height}x{width} (HxW) image"
    return None


def box_outside(bbox: list, height: int, width: int) -> bool:
    """Does a valid ``[x, y, w, h]`` box lie wholly outside a ``height``×``width`` image?"""
    x, y, w, h = (float(v) for v in bbox)
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """N×4 ``[x, y, w, h]`` -> N×4 ``[x1, y1, x2, y2]`` (same dtype)."""
    boxes = np.asarray(boxes)
    return np.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:4]], axis=-1)


# --------------------------------------------------------------------------- samples


def read_coco_image(path: Path, image_info: dict[str, Any]) -> np.ndarray:
    """The image of a COCO record, upright; read as stored instead when the record's
    height/width are those of the stored pixels and not of the upright ones (EXIF orientation)."""
    return read_image(path, expected_size=image_size(image_info))


def annotation_mask(ann: dict[str, Any], image_info: dict[str, Any], image_path: Path, size: tuple[int, int], ann_path: Path) -> np.ndarray:
    """H×W bool mask of a COCO annotation, checked against the size (H, W) of the image read from
    ``image_path``; a DatasetError names the annotation file and the image when they disagree."""
    height, width = image_size(image_info) or size
    if (height, width) != tuple(size):  # refuse before rasterising at a size that may be huge
        raise DatasetError(
            f"annotation {ann.get('id')} in {ann_path} is for a {height}x{width} image (its height/width there) "
            f"but image {image_path} is {size[0]}x{size[1]}{size_mismatch_hint(image_path, size, (height, width))}"
        )
    problem = segmentation_problem(ann.get("segmentation"), height, width)
    if problem:
        raise DatasetError(f"annotation {ann.get('id')} in {ann_path} (image {image_path}): {problem}")
    mask = decode_segmentation(ann["segmentation"], height, width)
    if mask.shape != size:
        raise DatasetError(
            f"annotation {ann.get('id')} in {ann_path} has a {mask.shape[0]}x{mask.shape[1]} mask "
            f"but image {image_path} is {size[0]}x{size[1]}{size_mismatch_hint(image_path, size, mask.shape)}"
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


def infer_image_dir(ann_file: str, option: str) -> str:
    """The image folder a COCO annotation file names: ``annotations/instances_val2017.json`` ->
    ``val2017``; any other name raises a DatasetError asking for ``option`` (the config key)."""
    stem = Path(ann_file).stem
    if stem.startswith("instances_") and len(stem) > len("instances_"):
        return stem[len("instances_"):]
    raise DatasetError(
        f"cannot infer the image folder from the annotation file name '{ann_file}' "
        f"(expected instances_<folder>.json); set {option}=<folder under dataset.root>"
    )
