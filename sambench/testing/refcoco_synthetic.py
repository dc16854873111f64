"""A tiny, learnable RefCOCO-style dataset in the real refer API file format.

Each image holds 2-3 shapes (square / circle / triangle) in distinct colours, placed left to
right, so both "the red circle" and "the shape on the right" pick exactly one object. The files
are the ones the RefCOCO adapters read::

    root/images/mscoco/images/train2014/COCO_train2014_%012d.jpg
    root/<dataset>/instances.json      # COCO format, polygon segmentations
    root/<dataset>/refs(<split_by>).p   # pickle protocol 2, list of ref dicts

Splits partition images (as unc and umd do); the same seed always gives the same files.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from sambench.data.refer_json import REFER_SPLITS, refs_file
from sambench.errors import ConfigError

IMAGE_DIR = "images/mscoco/images/train2014"
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30)}
CATEGORIES = [{"id": 1, "name": "square", "supercategory": "shape"},
              {"id": 2, "name": "circle", "supercategory": "shape"},
              {"id": 3, "name": "triangle", "supercategory": "shape"}]
CIRCLE_VERTICES = 24


def shape_polygon(kind: str, cx: float, cy: float, radius: float) -> list[float]:
    """Flat ``[x1, y1, x2, y2, ...]`` outline of a square, circle or triangle (pixels)."""
    if kind == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    elif kind == "triangle":
        corners = [(0, -1), (1, 1), (-1, 1)]
    else:
        angles = np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False)
        corners = list(zip(np.cos(angles), np.sin(angles)))
    return [round(float(v), 2) for x, y in corners for v in (cx + radius * x, cy + radius * y)]


def positions(count: int) -> list[str]:
    return ["left", "right"] if count == 2 else ["left", "middle", "right"]


def sentences_for(colour: str, kind: str, where: str, dataset: str) -> list[str]:
    """Two lower-case expressions; RefCOCO+ forbids location words, so it gets none."""
    if dataset == "refcoco+":
        return [f"the {colour} {kind}", f"{colour} one"]
    return [f"the {colour} {kind} on the {where}", f"the shape on the {where}"]


def split_of_images(num_images: int, splits: tuple[str, ...]) -> list[str]:
    """One split per image: the evaluation splits get ``max(1, n // 6)`` images each, train the rest."""
    per_eval = max(1, num_images // 6)
    eval_splits = [s for s in splits if s != "train"]
    tail = [s for s in eval_splits for _ in range(per_eval)]
    return ["train"] * (num_images - len(tail)) + tail


def draw_image(rng: np.random.Generator, size: tuple[int, int], shapes: list[dict[str, Any]]) -> Image.Image:
    """A softly noisy grey background with each shape's polygon filled in its colour."""
    height, width = size
    background = rng.normal(rng.uniform(110, 150), 6, size=(height, width, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        flat = shape["polygon"]
        draw.polygon(list(zip(flat[0::2], flat[1::2])), fill=COLOURS[shape["colour"]])
    return image


def _image_shapes(rng: np.random.Generator, size: tuple[int, int]) -> list[dict[str, Any]]:
    height, width = size
    count = int(rng.integers(2, 4))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    slot = width / count
    shapes = []
    for position, (colour, where) in enumerate(zip(colours, positions(count))):
        kind = str(rng.choice([c["name"] for c in CATEGORIES]))
        radius = float(rng.uniform(0.25, 0.38)) * min(slot, height)
        cx = slot * (position + 0.5) + rng.uniform(-0.08, 0.08) * slot
        cy = height / 2 + rng.uniform(-0.2, 0.2) * (height - 2 * radius)
        shapes.append({"kind": kind, "colour": str(colour), "where": where,
                       "polygon": shape_polygon(kind, cx, cy, radius)})
    return shapes


def write_synthetic_refcoco(
    root: Path,
    *,
    num_images: int = 12,
    seed: int = 0,
    image_size: tuple[int, int] = (96, 128),
    dataset: str = "refcoco",
    split_by: str = "unc",
) -> Path:
    """Write the dataset under ``root`` (created if needed) and return ``root``.

    Args:
        root: the refer data root (``dataset.root`` of the adapters).
        num_images: images in all splits together; every split gets at least one image
            (2-3 refs), so at least as many images as splits are needed.
        seed: every pixel, shape and id follows from it.
        image_size: (H, W) of every image.
        dataset / split_by: folder and refs flavour (a combination of
            :data:`~sambench.data.refer_json.REFER_SPLITS`); they pick the split names.
    """
    splits = REFER_SPLITS.get((dataset, split_by))
    if splits is None:
        valid = ", ".join(f"{d}/{s}" for d, s in REFER_SPLITS)
        raise ConfigError(f"unknown refer dataset/split_by '{dataset}/{split_by}'; valid: {valid}")
    if num_images < len(splits):
        raise ConfigError(
            f"num_images must be >= {len(splits)} (one image per split {', '.join(splits)}), got {num_images}"
        )
    root = Path(root)
    image_dir = root / IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / dataset).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, annotations, refs = [], [], []
    sent_id = 0
    for image_index, split in enumerate(split_of_images(num_images, splits)):
        image_id = 1000 + image_index
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        shapes = _image_shapes(rng, image_size)
        draw_image(rng, image_size, shapes).save(image_dir / file_name, quality=95)
        images.append({"id": image_id, "file_name": file_name, "height": image_size[0], "width": image_size[1]})
        for shape in shapes:
            ann_id = len(annotations) + 1
            xs, ys = np.array(shape["polygon"][0::2]), np.array(shape["polygon"][1::2])
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min())]
            area = 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))
            category_id = next(c["id"] for c in CATEGORIES if c["name"] == shape["kind"])
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
                                "segmentation": [shape["polygon"]], "bbox": bbox, "area": round(area, 2)})
            texts = sentences_for(shape["colour"], shape["kind"], shape["where"], dataset)
            sentences = []
            for number, sent in enumerate(texts):
                raw = sent.upper() if number == 0 else sent
                sentences.append({"tokens": sent.split(), "raw": raw, "sent_id": sent_id, "sent": sent})
                sent_id += 1
            refs.append({"ref_id": len(refs), "ann_id": ann_id, "image_id": image_id, "category_id": category_id,
                         "split": split, "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
                         "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"})
    instances = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / dataset / "instances.json").write_text(json.dumps(instances), encoding="utf-8")
    with open(refs_file(root / dataset, split_by, ".p"), "wb") as file:
        pickle.dump(refs, file, protocol=2)
    return root
