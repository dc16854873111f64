"""Tiny, learnable semantic segmentation datasets in the real file layouts.

Each image is a street-like scene: horizontal bands of "stuff" classes (e.g. sky, building,
sidewalk, road), two or three "thing" objects (rectangles and ellipses, one per column slot)
and small void patches (ignored labels). Every class has its own flat colour plus a little
noise, so a model can learn the classes from the pixels. Thing classes are drawn from a seeded
cycle over the class pool, so a split of a few images covers many classes and class presence
differs between images (what the few-shot protocol needs). The same seed gives the same files.

Writers (each returns the folder to pass as ``dataset.root``):

- :func:`write_synthetic_cityscapes`: ``leftImg8bit/`` + ``gtFine/`` with ``labelIds`` AND
  ``labelTrainIds`` PNGs (void labelIds 1 "ego vehicle" and 9 "parking" are in every image).
- :func:`write_synthetic_ade20k`: ``ADEChallengeData2016/{images,annotations}/{training,validation}``,
  labels 0..150 (0 = other, in every image); optionally an ``objectInfo150.txt``.
- :func:`write_synthetic_acdc`: ``rgb_anon/`` + ``gt/`` per condition and sequence (or the
  download's ``rgb_anon_trainvaltest/`` and ``gt_trainval/`` prefixes), condition-styled images.
- :func:`write_synthetic_bdd100k`, :func:`write_synthetic_mapillary` (palette PNGs with v1.2
  indices + ``config_v1.2.json``) and :func:`write_synthetic_pascal_context` (split lists).
"""

from __future__ import annotations

import colorsys
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sambench.data.semantic import CITYSCAPES_TRAIN_LABEL_IDS, LABEL_ID_TO_TRAIN_ID, apply_lut

SPLIT_STREAMS = {"train": 1, "val": 2}
#: Cityscapes labelIds used as bands: sky, building / vegetation, sidewalk, road.
CITYSCAPES_BANDS = (23, (11, 21), 8, 7)
#: Cityscapes labelIds of every other evaluated class (things are drawn from these).
CITYSCAPES_THINGS = tuple(i for i in CITYSCAPES_TRAIN_LABEL_IDS if i not in (23, 11, 21, 8, 7))
#: Void labelIds written in every Cityscapes / ACDC image: ego vehicle, parking.
CITYSCAPES_VOID = (1, 9)
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
#: Mapillary Vistas v1.2 class names, in label-index order (index 65 = void--unlabeled).
MAPILLARY_V12_NAMES = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb", "construction--barrier--fence",
    "construction--barrier--guard-rail", "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain", "construction--flat--curb-cut",
    "construction--flat--parking", "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building", "construction--structure--tunnel",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand", "nature--sky",
    "nature--snow", "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench",
    "object--bike-rack", "object--billboard", "object--catch-basin", "object--cctv-camera", "object--fire-hydrant",
    "object--junction-box", "object--mailbox", "object--manhole", "object--phone-booth", "object--pothole",
    "object--street-light", "object--support--pole", "object--support--traffic-sign-frame",
    "object--support--utility-pole", "object--traffic-light", "object--traffic-sign--back",
    "object--traffic-sign--front", "object--trash-can", "object--vehicle--bicycle", "object--vehicle--boat",
    "object--vehicle--bus", "object--vehicle--car", "object--vehicle--caravan", "object--vehicle--motorcycle",
    "object--vehicle--on-rails", "object--vehicle--other-vehicle", "object--vehicle--trailer",
    "object--vehicle--truck", "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle",
    "void--unlabeled",
)
MAPILLARY_BANDS = ("nature--sky", ("construction--structure--building", "nature--vegetation"),
                   "construction--flat--sidewalk", "construction--flat--road")
#: Things of the synthetic Mapillary set: classes mapped to Cityscapes ones (several sources per
#: class, e.g. the three riders) and some that map to ignore (bench, guard rail, parking).
MAPILLARY_THINGS = (
    "construction--barrier--wall", "construction--barrier--fence", "object--support--pole",
    "object--support--utility-pole", "object--traffic-light", "object--traffic-sign--front", "nature--terrain",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "object--vehicle--car", "object--vehicle--truck", "object--vehicle--bus", "object--vehicle--on-rails",
    "object--vehicle--motorcycle", "object--vehicle--bicycle", "marking--general", "object--bench",
    "construction--barrier--guard-rail", "construction--flat--parking",
)
MAPILLARY_VOID = ("void--ego-vehicle", "void--unlabeled")


def class_colour(value: int) -> np.ndarray:
    """A fixed, well-spread RGB colour for a label value (golden-ratio hues, three brightnesses)."""
    hue = (value * 0.618033988749895) % 1.0
    saturation = 0.55 + 0.4 * ((value // 3) % 2)
    brightness = (0.95, 0.7, 0.45)[value % 3]
    return np.array([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, brightness)], dtype=np.float32)


def cycle(rng: np.random.Generator, pool: Sequence[int]) -> Iterator[int]:
    """Endless seeded permutations of ``pool`` (every value comes once before any repeats)."""
    while True:
        yield from (int(v) for v in rng.permutation(np.asarray(pool)))


def draw_scene(
    rng: np.random.Generator, size: tuple[int, int], *, bands: Sequence[int], things: Sequence[int], void: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """An H×W×3 uint8 image and its H×W uint8 label map, in the label space of the values given.

    ``bands`` fill horizontal stripes top to bottom; ``void`` values become a bottom strip (the
    first) and patches in the top-right corner; ``things`` are rectangles / ellipses, one per
    column slot between 30% and 85% of the height (never covering the void areas).
    """
    height, width = size
    labels = np.empty((height, width), dtype=np.uint8)
    cuts = [0]
    for k in range(1, len(bands)):
        jitter = rng.integers(-height // 20, height // 20 + 1)
        cuts.append(int(np.clip(k * height / len(bands) + jitter, cuts[-1] + 2, height)))
    cuts.append(height)
    for value, top, bottom in zip(bands, cuts[:-1], cuts[1:]):
        labels[top:bottom] = value
    strip = max(2, height // 10)
    if void:
        labels[height - strip:] = void[0]
    patch_h, patch_w = max(2, height // 6), max(2, width // 8)
    for k, value in enumerate(void[1:]):
        right = width - k * (patch_w + 2)
        labels[: patch_h, max(0, right - patch_w): right] = value
    yy, xx = np.mgrid[0:height, 0:width]
    slot = width / max(1, len(things))
    low, high = int(0.3 * height), height - strip
    for k, value in enumerate(things):
        w = max(3, int(slot * rng.uniform(0.5, 0.8)))
        h = max(3, int((high - low) * rng.uniform(0.4, 0.8)))
        x0 = int(k * slot + rng.integers(0, max(1, int(slot) - w + 1)))
        y0 = int(rng.integers(low, max(low + 1, high - h + 1)))
        if rng.random() < 0.5:
            labels[y0:y0 + h, x0:x0 + w] = value
        else:
            cy, cx, ry, rx = y0 + h / 2, x0 + w / 2, h / 2, w / 2
            labels[((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0] = value
    palette = np.stack([class_colour(v) for v in range(256)])
    image = palette[labels] + rng.normal(0.0, 6.0, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _style(image: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
    """ACDC look: fog washes out, night darkens, rain adds streaks, snow adds flakes."""
    out = image.astype(np.float32)
    if condition == "fog":
        out = 0.45 * out + 0.55 * 200.0
    elif condition == "night":
        out = 0.3 * out
    elif condition == "rain":
        cols = rng.choice(out.shape[1], size=max(1, out.shape[1] // 12), replace=False)
        out[:, cols] = 0.5 * out[:, cols] + 0.5 * 180.0
    elif condition == "snow":
        flakes = rng.random(out.shape[:2]) < 0.03
        out[flakes] = 245.0
    return np.clip(out, 0, 255).astype(np.uint8)


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)


def _pick(value, i: int):
    """A band entry is a value or a tuple of alternatives (taken in turn per image)."""
    return value[i % len(value)] if isinstance(value, tuple) else value


def _cityscapes_scene(rng, things: Iterator[int], i: int, size, per_image: int) -> tuple[np.ndarray, np.ndarray]:
    bands = [_pick(b, i) for b in CITYSCAPES_BANDS]
    return draw_scene(rng, size, bands=bands, things=[next(things) for _ in range(per_image)], void=CITYSCAPES_VOID)


def write_synthetic_cityscapes(
    root, *, train_images: int = 6, val_images: int = 2, seed: int = 0, size: tuple[int, int] = (64, 128),
    things_per_image: int = 3,
) -> Path:
    """``root/leftImg8bit/{train,val}/<city>/<city>_NNNNNN_000019_leftImg8bit.png`` and
    ``root/gtFine/.../*_gtFine_labelIds.png`` + ``*_gtFine_labelTrainIds.png`` (= the labelIds
    through the Cityscapes table). With 6 training images every one of the 19 classes appears
    in the training split."""
    root = Path(root)
    cities = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau")}
    for split, count in (("train", train_images), ("val", val_images)):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
        things = cycle(rng, CITYSCAPES_THINGS)
        for i in range(count):
            city = cities[split][i % 2]
            name = f"{city}_{i:06d}_000019"
            image, label_ids = _cityscapes_scene(rng, things, i, size, things_per_image)
            _save(image, root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            gt = root / "gtFine" / split / city
            _save(label_ids, gt / f"{name}_gtFine_labelIds.png")
            _save(apply_lut(label_ids, LABEL_ID_TO_TRAIN_ID), gt / f"{name}_gtFine_labelTrainIds.png")
    return root


def write_synthetic_acdc(
    root, *, train_images: int = 3, val_images: int = 1, seed: int = 0, size: tuple[int, int] = (64, 128),
    conditions: Sequence[str] = ACDC_CONDITIONS, download_layout: bool = False, things_per_image: int = 3,
) -> Path:
    """Per condition: ``rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_NNNNNN_rgb_anon.png``
    and ``gt/<condition>/<split>/<sequence>/..._gt_labelTrainIds.png`` (+ ``_gt_labelIds.png``);
    ``download_layout=True`` puts them under ``rgb_anon_trainvaltest/`` and ``gt_trainval/``.
    ``train_images`` / ``val_images`` count per condition."""
    root = Path(root)
    image_root = root / "rgb_anon_trainvaltest" / "rgb_anon" if download_layout else root / "rgb_anon"
    label_root = root / "gt_trainval" / "gt" if download_layout else root / "gt"
    for c, condition in enumerate(conditions):
        for split, count in (("train", train_images), ("val", val_images)):
            rng = np.random.default_rng([seed, SPLIT_STREAMS[split], c])
            things = cycle(rng, CITYSCAPES_THINGS)
            for i in range(count):
                sequence = f"GOPR{400 + 10 * c + i % 2:04d}"
                name = f"{sequence}_frame_{10 * i + 1:06d}"
                image, label_ids = _cityscapes_scene(rng, things, i, size, things_per_image)
                _save(_style(image, condition, rng), image_root / condition / split / sequence / f"{name}_rgb_anon.png")
                gt = label_root / condition / split / sequence
                _save(label_ids, gt / f"{name}_gt_labelIds.png")
                _save(apply_lut(label_ids, LABEL_ID_TO_TRAIN_ID), gt / f"{name}_gt_labelTrainIds.png")
    return root


def write_synthetic_ade20k(
    root, *, train_images: int = 6, val_images: int = 2, seed: int = 0, size: tuple[int, int] = (64, 96),
    class_names: Sequence[str] | None = None, things_per_image: int = 4,
) -> Path:
    """``root/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg`` and
    ``annotations/.../*.png`` with values 0..150 (bands 1 wall / 4 floor, 0 "other" patches in
    every image); widths vary per image. ``class_names`` (150) also writes an ``objectInfo150.txt``."""
    root = Path(root)
    base = root / "ADEChallengeData2016"
    pool = [v for v in range(2, 151) if v != 4]
    for split, folder, prefix, count in (("train", "training", "ADE_train", train_images),
                                         ("val", "validation", "ADE_val", val_images)):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
        things = cycle(rng, pool)
        for i in range(count):
            scene_size = (size[0], size[1] + 16 * (i % 3))
            chosen = [next(things) for _ in range(things_per_image)]
            image, labels = draw_scene(rng, scene_size, bands=[1, 4], things=chosen, void=[0, 0])
            _save(image, base / "images" / folder / f"{prefix}_{i + 1:08d}.jpg")
            _save(labels, base / "annotations" / folder / f"{prefix}_{i + 1:08d}.png")
    if class_names is not None:
        if len(class_names) != 150:
            raise ValueError(f"class_names must hold 150 names, got {len(class_names)}")
        rows = ["Idx\tRatio\tTrain\tVal\tName"] + [f"{i}\t0.0100\t10\t1\t{n}" for i, n in enumerate(class_names, 1)]
        (base / "objectInfo150.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_synthetic_bdd100k(
    root, *, train_images: int = 6, val_images: int = 2, seed: int = 0, size: tuple[int, int] = (72, 128),
    things_per_image: int = 3,
) -> Path:
    """``root/bdd100k/images/10k/{train,val}/<hex>-<hex>.jpg`` and
    ``root/bdd100k/labels/sem_seg/masks/{train,val}/<same>.png`` holding trainIds (255 = ignore)."""
    root = Path(root)
    base = root / "bdd100k"
    bands = [int(LABEL_ID_TO_TRAIN_ID[_pick(b, 0)]) for b in CITYSCAPES_BANDS]
    alternative = int(LABEL_ID_TO_TRAIN_ID[CITYSCAPES_BANDS[1][1]])
    pool = [int(LABEL_ID_TO_TRAIN_ID[v]) for v in CITYSCAPES_THINGS]
    for split, count in (("train", train_images), ("val", val_images)):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
        things = cycle(rng, pool)
        for i in range(count):
            scene_bands = list(bands) if i % 2 == 0 else [bands[0], alternative, *bands[2:]]
            chosen = [next(things) for _ in range(things_per_image)]
            image, labels = draw_scene(rng, size, bands=scene_bands, things=chosen, void=[255, 255])
            name = f"{int(rng.integers(16 ** 7, 16 ** 8)):08x}-{int(rng.integers(16 ** 7, 16 ** 8)):08x}"
            _save(image, base / "images" / "10k" / split / f"{name}.jpg")
            _save(labels, base / "labels" / "sem_seg" / "masks" / split / f"{name}.png")
    return root


def write_synthetic_mapillary(
    root, *, train_images: int = 6, val_images: int = 2, seed: int = 0, size: tuple[int, int] = (72, 128),
    things_per_image: int = 3, config_name: str = "config_v1.2.json",
) -> Path:
    """``root/{training,validation}/images/<key>.jpg``, ``root/.../v1.2/labels/<key>.png`` (8-bit
    palette PNGs holding v1.2 class indices) and ``root/<config_name>`` listing the 66 v1.2 labels."""
    root = Path(root)
    index = {name: i for i, name in enumerate(MAPILLARY_V12_NAMES)}
    colours = [class_colour(i).astype(int).tolist() for i in range(len(MAPILLARY_V12_NAMES))]
    palette = [c for colour in colours for c in colour] + [0] * (3 * (256 - len(colours)))
    for split, folder, count in (("train", "training", train_images), ("val", "validation", val_images)):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
        things = cycle(rng, [index[n] for n in MAPILLARY_THINGS])
        for i in range(count):
            bands = [index[_pick(b, i)] for b in MAPILLARY_BANDS]
            image, labels = draw_scene(rng, size, bands=bands, things=[next(things) for _ in range(things_per_image)],
                                       void=[index[n] for n in MAPILLARY_VOID])
            key = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"), 22))
            _save(image, root / folder / "images" / f"{key}.jpg")
            label_path = root / folder / "v1.2" / "labels" / f"{key}.png"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            png = Image.fromarray(labels)
            png.putpalette(palette)
            png.save(label_path)
    config = {"labels": [
        {"name": name, "readable": name.split("--")[-1].replace("-", " ").title(), "color": colours[i],
         "instances": False, "evaluate": not name.startswith("void--")}
        for i, name in enumerate(MAPILLARY_V12_NAMES)
    ], "version": "1.2", "mapping": "public", "folder_structure": "{split}/{content}/{key:.{ext}}"}
    (root / config_name).write_text(json.dumps(config, indent=2), encoding="utf-8")
    return root


def write_synthetic_pascal_context(
    root, *, train_images: int = 6, val_images: int = 2, seed: int = 0, size: tuple[int, int] = (72, 96),
    things_per_image: int = 3,
) -> Path:
    """``root/VOCdevkit/VOC2010/JPEGImages/<id>.jpg``, ``SegmentationClassContext/<id>.png``
    (0..59, 0 = background, in every image) and ``ImageSets/SegmentationContext/{train,val}.txt``."""
    root = Path(root)
    base = root / "VOCdevkit" / "VOC2010"
    bands = [47, 11, 30]  # sky, building, ground in the 59-class order (+1)
    pool = [v for v in range(1, 60) if v not in bands]
    offset = 0
    for split, count in (("train", train_images), ("val", val_images)):
        rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
        things = cycle(rng, pool)
        ids = []
        for i in range(count):
            image_id = f"2008_{offset + i + 1:06d}"
            image, labels = draw_scene(rng, size, bands=bands, things=[next(things) for _ in range(things_per_image)],
                                       void=[0, 0])
            _save(image, base / "JPEGImages" / f"{image_id}.jpg")
            _save(labels, base / "SegmentationClassContext" / f"{image_id}.png")
            ids.append(image_id)
        offset += count
        lists = base / "ImageSets" / "SegmentationContext"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    return root
