"""Tiny synthetic copies of the one-shot benchmarks' real layouts, for tests.

- :func:`write_synthetic_coco20i`: ``COCO2014/val2014/COCO_val2014_%012d.jpg``, HSNet-style
  label PNGs ``annotations/val2014/<stem>.png`` (value = class index + 1) and
  ``splits/val/fold<i>.pkl`` written with ``pickle.dump`` (protocol 3, as HSNet's files) of a
  plain dict {class index 0..79: [image names]} (classes outside the fold: empty lists).
- :func:`write_synthetic_fss1000`: ``FSS-1000/<class>/{1..10}.jpg`` + ``.png`` (RGB, grayscale
  and palette masks, with values on both sides of the 128 threshold), optionally under
  ``data/`` (Matcher's layout), and ``splits/test.txt`` with CRLF line endings like HSNet's.
- :func:`write_synthetic_lvis92i`: ``LVIS/coco/{train2017,val2017}/*.jpg`` and
  ``lvis_val.pkl`` = {category id: {image name: {'annotations': [{'segmentation': ...}]}}} with
  polygon, compressed-RLE (str and bytes counts) and uncompressed-RLE annotations; category ids
  are not in sorted order and some have a single image (excluded from the folds).

Images have different sizes; pixels are smooth random patterns (JPEG-friendly).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

COCO_FOLDS = 4
COCO_CLASSES = 80
#: FSS-1000 test classes written by default (listed unsorted, as in HSNet's test.txt).
FSS_CLASSES = ("bus", "hotel_slipper", "burj_al")


def _pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random H×W×3 uint8 image (a coarse random grid, upsampled)."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def _save_jpeg(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


# --------------------------------------------------------------------------- COCO-20i


def write_synthetic_coco20i(root: Path, *, folds=(0,), num_images: int = 10, seed: int = 0,
                            empty_mask: bool = False) -> Path:
    """Write ``root`` (the COCO2014 folder). Class ``j``-th of a fold (index ``fold + 4j``) is in
    images ``j``, ``j + 3`` and ``j + 7`` (mod ``num_images``), drawn as a vertical stripe. With
    ``empty_mask``, image 0 is listed for its last class but holds no pixel of it."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    members: list[list[int]] = [[] for _ in range(num_images)]
    lists: dict[int, list[str]] = {c: [] for c in range(COCO_CLASSES)}
    names = [f"val2014/COCO_val2014_{100 + 7 * i:012d}.jpg" for i in range(num_images)]
    for fold in folds:
        for j in range(COCO_CLASSES // COCO_FOLDS):
            class_id = fold + COCO_FOLDS * j
            for image in sorted({j % num_images, (j + 3) % num_images, (j + 7) % num_images}):
                members[image].append(class_id)
                lists[class_id].append(names[image])
    for i, name in enumerate(names):
        height, width = 36 + 3 * i, 48 + 5 * (i % 4)
        _save_jpeg(root / name, _pixels(rng, height, width))
        labels = np.zeros((height, width), dtype=np.uint8)
        drawn = [c for c in members[i] if not (empty_mask and i == 0 and c == members[0][-1])]
        stripe = max(1, width // max(1, len(drawn)))
        for k, class_id in enumerate(drawn):
            top = int(rng.integers(0, height // 3))
            labels[top:top + height // 2, k * stripe:(k + 1) * stripe] = class_id + 1
        mask_path = root / "annotations" / name.replace(".jpg", ".png")
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels, mode="L").save(mask_path)
    for fold in folds:
        fold_ids = {fold + COCO_FOLDS * j for j in range(COCO_CLASSES // COCO_FOLDS)}
        split = {c: (list(lists[c]) if c in fold_ids else []) for c in range(COCO_CLASSES)}
        path = root / "splits" / "val" / f"fold{fold}.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(split, f, protocol=3)
    return root


# --------------------------------------------------------------------------- FSS-1000


def write_synthetic_fss1000(root: Path, *, classes=FSS_CLASSES, matcher_layout: bool = False,
                            extra_classes=("ab_wheel",), seed: int = 0) -> Path:
    """Write ``root`` (the FSS-1000 folder): ten image/mask pairs per class (class folders under
    ``data/`` when ``matcher_layout``), the class list ``splits/test.txt`` (CRLF, final newline)
    and ``extra_classes`` folders that the list does not name."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    data = root / "data" if matcher_layout else root
    for c, name in enumerate([*classes, *extra_classes]):
        folder = data / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, 11):
            height, width = 30 + 2 * c + n, 40 + 3 * n
            _save_jpeg(folder / f"{n}.jpg", _pixels(rng, height, width))
            gray = np.zeros((height, width), dtype=np.uint8)
            top, left = int(rng.integers(0, height // 3)), int(rng.integers(0, width // 3))
            gray[top:top + height // 2, left:left + width // 2] = 255
            gray[top:top + 3, left:left + width // 2] = 127 if n % 2 else 128  # threshold edge: 127 bg, 128 fg
            if c % 3 == 0:  # RGB 0/255 masks; a reddish value whose L is below 128
                rgb = np.repeat(gray[..., None], 3, axis=-1)
                rgb[-2:, :4] = (200, 60, 60)
                Image.fromarray(rgb).save(folder / f"{n}.png")
            elif c % 3 == 1:
                Image.fromarray(gray, mode="L").save(folder / f"{n}.png")
            else:  # palette: index 1 = white
                palette = Image.fromarray((gray >= 128).astype(np.uint8), mode="P")
                palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
                palette.save(folder / f"{n}.png")
    split = root / "splits" / "test.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_bytes("".join(f"{name}\r\n" for name in classes).encode())
    return root


# --------------------------------------------------------------------------- LVIS-92i


def _polygon(rng: np.random.Generator, height: int, width: int) -> list[float]:
    x, y = float(rng.uniform(0, width * 0.5)), float(rng.uniform(0, height * 0.5))
    w, h = float(rng.uniform(width * 0.2, width * 0.45)), float(rng.uniform(height * 0.2, height * 0.45))
    return [x, y, x + w, y, x + w * 0.8, y + h, x, y + h * 0.7]


def _segmentation(rng: np.random.Generator, kind: int, height: int, width: int):
    """kind 0: polygons; 1: compressed RLE (str counts); 2: compressed RLE (bytes counts);
    3: uncompressed RLE (list counts)."""
    if kind == 0:
        return [_polygon(rng, height, width)] + ([_polygon(rng, height, width)] if rng.random() < 0.5 else [])
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    top, left = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    mask[top:top + height // 3, left:left + width // 3] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    if kind == 1:
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    if kind == 2:
        return {"size": [height, width], "counts": rle["counts"]}
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": [height, width], "counts": counts}


def write_synthetic_lvis92i(root: Path, *, num_categories: int = 22, num_images: int = 8, seed: int = 0) -> Path:
    """Write ``root`` (the LVIS folder): ``num_categories`` categories with 2..4 images each
    (ids in a shuffled order), plus three with a single image, over ``num_images`` images in
    ``coco/train2017`` and ``coco/val2017``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes, names = [], []
    for i in range(num_images):
        height, width = 40 + 4 * i, 52 + 3 * i
        name = f"{'val2017' if i % 2 else 'train2017'}/{139 + 11 * i:012d}.jpg"
        _save_jpeg(root / "coco" / name, _pixels(rng, height, width))
        sizes.append((height, width))
        names.append(name)
    ids = [int(v) for v in rng.permutation(np.arange(1, 3 * num_categories))[:num_categories + 3]]
    data: dict[int, dict[str, dict]] = {}
    for position, category in enumerate(ids):
        count = 1 if position % 8 == 5 else 2 + position % 3
        chosen = rng.choice(num_images, size=count, replace=False)
        entry = {}
        for image in chosen.tolist():
            height, width = sizes[image]
            annotations = [{"segmentation": _segmentation(rng, (position + k) % 4, height, width), "area": 1.0}
                           for k in range(1 + (position + image) % 2)]
            entry[names[image]] = {"annotations": annotations}
        data[category] = entry
    with open(root / "lvis_val.pkl", "wb") as f:
        pickle.dump(data, f, protocol=4)
    return root
