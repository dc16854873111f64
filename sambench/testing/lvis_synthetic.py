"""A tiny synthetic LVIS v1 dataset in the real file layout, for tests.

``root/annotations/lvis_v1_{train,val}.json`` plus JPEG images at the paths their ``coco_url``
names (``root/train2017/…`` and ``root/val2017/…`` mixed, as in LVIS v1 val). Six categories
(two each of frequency r, c and f, with LVIS-style names and synonyms); every image has
polygon instances, ``neg_category_ids`` and ``not_exhaustive_category_ids``. Image 0 of each
file holds only rare instances, so training without rare categories drops it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [
    {"id": 1, "name": "car_(automobile)", "synonyms": ["car_(automobile)", "auto_(automobile)"], "frequency": "f"},
    {"id": 2, "name": "sofa", "synonyms": ["sofa", "couch", "lounge"], "frequency": "c"},
    {"id": 3, "name": "armadillo", "synonyms": ["armadillo"], "frequency": "r"},
    {"id": 4, "name": "bus_(vehicle)", "synonyms": ["bus_(vehicle)", "autobus"], "frequency": "f"},
    {"id": 5, "name": "headscarf", "synonyms": ["headscarf"], "frequency": "c"},
    {"id": 6, "name": "bagpipe", "synonyms": ["bagpipe"], "frequency": "r"},
]
RARE_IDS = (3, 6)
URL = "http://images.cocodataset.org"


def _instance(rng: np.random.Generator, height: int, width: int) -> list[float]:
    """A random rectangle or triangle polygon well inside the image."""
    x1, y1 = rng.uniform(0, width * 0.5), rng.uniform(0, height * 0.5)
    w, h = rng.uniform(width * 0.2, width * 0.45), rng.uniform(height * 0.2, height * 0.45)
    if rng.random() < 0.5:
        return [x1, y1, x1 + w, y1, x1 + w, y1 + h, x1, y1 + h]
    return [x1, y1, x1 + w, y1 + h * 0.3, x1 + w * 0.4, y1 + h]


def _write_split(root: Path, name: str, num_images: int, first_id: int, rng: np.random.Generator) -> None:
    images, annotations = [], []
    all_ids = [c["id"] for c in CATEGORIES]
    common = [c for c in all_ids if c not in RARE_IDS]
    for n in range(num_images):
        image_id = first_id + n
        height, width = int(rng.integers(48, 72)), int(rng.integers(56, 88))
        folder = "val2017" if n % 2 else "train2017"
        file_name = f"{image_id:012d}.jpg"
        pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / folder / file_name, quality=95)
        if n == 0:
            cats = [RARE_IDS[0], RARE_IDS[1]]
        else:
            cats = [int(c) for c in rng.choice(common, size=2, replace=False)] + [int(rng.choice(all_ids))]
        for cat in cats:
            polygon = [round(float(v), 2) for v in _instance(rng, height, width)]
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
            annotations.append({
                "id": len(annotations) + 1 + first_id * 100, "image_id": image_id, "category_id": cat,
                "segmentation": [polygon], "area": float(mask_utils.area(rle)), "bbox": bbox,
            })
        absent = [c for c in all_ids if c not in cats]
        images.append({
            "id": image_id, "height": height, "width": width, "license": 1,
            "coco_url": f"{URL}/{folder}/{file_name}", "flickr_url": "", "date_captured": "2013-11-14 16:28:13",
            "neg_category_ids": absent[:1], "not_exhaustive_category_ids": [cats[0]] if n % 3 == 2 else [],
        })
    categories = []
    for cat in CATEGORIES:
        count = [a["category_id"] for a in annotations].count(cat["id"])
        categories.append({
            **cat, "synset": f"{cat['name'].split('_')[0]}.n.01", "def": f"a {cat['name']}",
            "image_count": len({a["image_id"] for a in annotations if a["category_id"] == cat["id"]}),
            "instance_count": count,
        })
    data = {"info": {"description": "synthetic LVIS v1"}, "licenses": [{"id": 1, "name": "none"}],
            "images": images, "annotations": annotations, "categories": categories}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / name).write_text(json.dumps(data), encoding="utf-8")


def write_synthetic_lvis(root: str | Path, *, num_images: int = 4, seed: int = 0) -> Path:
    """Write the synthetic LVIS v1 layout under ``root`` (train and val, ``num_images`` each);
    returns ``root``."""
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_split(root, "lvis_v1_train.json", num_images, 1000, rng)
    _write_split(root, "lvis_v1_val.json", num_images, 2000, rng)
    return root
