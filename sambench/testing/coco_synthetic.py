"""A tiny synthetic COCO 2017 in the real layout (annotations/instances_{train,val}2017.json,
{train,val}2017/<file_name>) with the 80 real category ids and names, for tests and demos
that must run without the shared COCO sample.

Each image shows 1–3 filled polygons on a grey background; a polygon's colour is a function of
its category, so a model can learn to recognise the classes. Categories are drawn from a small
pool that holds base and novel classes of the open-vocabulary split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from sambench.testing.lvis_synthetic import _instance

COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)
#: Categories drawn: base (1 person, 3 car, 19 horse, 62 chair), novel (5 airplane, 17 cat, 18 dog), other (10).
POOL = (1, 3, 19, 62, 5, 17, 18, 10)


def _colour(category_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(category_id)
    return tuple(int(v) for v in rng.integers(30, 226, size=3))


def _write_split(root: Path, split: str, num_images: int, first_id: int, rng: np.random.Generator) -> None:
    images, annotations = [], []
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(num_images):
        image_id = first_id + n
        height, width = int(rng.integers(48, 80)), int(rng.integers(56, 96))
        canvas = Image.new("RGB", (width, height), (128, 128, 128))
        draw = ImageDraw.Draw(canvas)
        cats = [int(c) for c in rng.choice(POOL, size=int(rng.integers(1, 4)), replace=False)]
        for cat in cats:
            polygon = [round(float(v), 2) for v in _instance(rng, height, width)]
            draw.polygon(polygon, fill=_colour(cat))
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            annotations.append({
                "id": first_id * 100 + len(annotations) + 1, "image_id": image_id, "category_id": cat,
                "segmentation": [polygon], "area": float(mask_utils.area(rle)), "iscrowd": 0,
                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
            })
        file_name = f"{image_id:012d}.png"  # lossless: the polygons keep their exact colours
        canvas.save(folder / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width, "license": 1})
    data = {"info": {"description": "synthetic COCO 2017"}, "licenses": [{"id": 1, "name": "none"}], "images": images,
            "annotations": annotations, "categories": [{"id": i, "name": name, "supercategory": "x"} for i, name in COCO_CATEGORIES]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data), encoding="utf-8")


def write_synthetic_coco(root: str | Path, *, num_images: int = 4, seed: int = 0) -> Path:
    """Write train2017 and val2017 with num_images images each under root; returns root."""
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_split(root, "train2017", num_images, 1000, rng)
    _write_split(root, "val2017", num_images, 2000, rng)
    return root
