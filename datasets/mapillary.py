"""Mapillary Vistas v1.2, mapped to the 19 Cityscapes classes.

Layout::

    <root>/{training,validation}/images/<key>.jpg
    <root>/{training,validation}/v1.2/labels/<key>.png     # 8-bit palette PNG, index = v1.2 class
    <root>/config_v1.2.json   (or config.json)             # "labels": [{"name": ...}, ...] in index order

The v1.2 classes (66, e.g. ``construction--flat--road``) are read from the config file and
mapped **by name** to the Cityscapes classes with :data:`VISTAS_TO_CITYSCAPES`. That mapping is
ours (no official one exists). It follows the Cityscapes label definitions: road includes its
markings and lanes only delimited by markings; sidewalk includes curbs and pedestrian areas;
terrain includes sand; poles include sign frames and street lights. Vistas classes that are
void in Cityscapes (parking, rail track, guard rail, bridge, tunnel, caravan, trailer) and every
other class (other barrier, animals, street furniture, manholes, back sides of signs, water,
snow, mountains, boats, other vehicles, ego vehicle...) become 255 (ignore).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from sambench.data.semantic import (
    CITYSCAPES_CLASSES,
    SemanticEntry,
    SemanticSegmentationDataset,
    apply_lut,
    make_lut,
    pair_files,
)
from sambench.errors import DatasetError
from sambench.registry import DATASETS

CONFIG_FILES = ("config_v1.2.json", "config.json")
#: Cityscapes class <- Mapillary Vistas v1.2 class names (ours, by name; everything else -> 255).
CITYSCAPES_FROM_VISTAS: dict[str, tuple[str, ...]] = {
    "road": (
        "construction--flat--road", "construction--flat--bike-lane", "construction--flat--crosswalk-plain",
        "construction--flat--service-lane", "marking--crosswalk-zebra", "marking--general",
    ),
    "sidewalk": (
        "construction--flat--sidewalk", "construction--flat--pedestrian-area", "construction--barrier--curb",
        "construction--flat--curb-cut",
    ),
    "building": ("construction--structure--building",),
    "wall": ("construction--barrier--wall",),
    "fence": ("construction--barrier--fence",),
    "pole": (
        "object--support--pole", "object--support--utility-pole", "object--support--traffic-sign-frame",
        "object--street-light",
    ),
    "traffic light": ("object--traffic-light",),
    "traffic sign": ("object--traffic-sign--front",),
    "vegetation": ("nature--vegetation",),
    "terrain": ("nature--terrain", "nature--sand"),
    "sky": ("nature--sky",),
    "person": ("human--person",),
    "rider": ("human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider"),
    "car": ("object--vehicle--car",),
    "truck": ("object--vehicle--truck",),
    "bus": ("object--vehicle--bus",),
    "train": ("object--vehicle--on-rails",),
    "motorcycle": ("object--vehicle--motorcycle",),
    "bicycle": ("object--vehicle--bicycle",),
}
#: Mapillary v1.2 class name -> Cityscapes trainId.
VISTAS_TO_CITYSCAPES: dict[str, int] = {
    name: CITYSCAPES_CLASSES.index(target) for target, names in CITYSCAPES_FROM_VISTAS.items() for name in names
}


def read_vistas_names(path) -> list[str]:
    """``labels[].name`` of a Mapillary Vistas config file, in index order."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the Mapillary config {path} ({exc})") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    named = isinstance(labels, list) and all(isinstance(x, dict) and isinstance(x.get("name"), str) for x in labels)
    if not labels or not named:
        raise DatasetError(f"Mapillary config {path}: expected a 'labels' list of objects with a 'name' each")
    if len(labels) > 256:
        raise DatasetError(f"Mapillary config {path} lists {len(labels)} labels; 8-bit label PNGs hold at most 256")
    return [x["name"] for x in labels]


@DATASETS.register_module(name="mapillary")
class MapillaryDataset(SemanticSegmentationDataset):
    """Mapillary Vistas v1.2 labels mapped to the 19 Cityscapes classes, sorted by image key.

    Sample ``meta``: ``file_name`` (``<split>/images/<key>.jpg``) and ``prediction_path`` (``<key>``).

    Args:
        split: "train" (reads ``train_split``) or "eval" (``eval_split``).
        root: the Vistas folder holding ``training/``, ``validation/`` and the config file.
        train_split / eval_split: split folders (training / validation).
        max_samples: keep only the first N samples; None = all (the few-shot subset is
            :class:`~sambench.data.few_shot.FewShotSubset`, built by the composition root).
    """

    NAME = "mapillary"
    ROOT_HINT = (
        "a Mapillary Vistas folder holding config_v1.2.json (or config.json), <split>/images/*.jpg and "
        "<split>/v1.2/labels/*.png"
    )
    CLASS_NAMES = tuple(CITYSCAPES_CLASSES)
    SPLIT_NAMES = ("training", "validation")

    def prepare(self) -> None:
        config = next((self.root / name for name in CONFIG_FILES if (self.root / name).is_file()), None)
        if config is None:
            raise DatasetError(
                f"Mapillary config not found in {self.root}: expected {' or '.join(CONFIG_FILES)} from the Vistas "
                f"download (its 'labels' list names the v1.2 classes in label-index order)"
            )
        self.config_file = config
        self.vistas_names = read_vistas_names(config)
        mapping = {i: VISTAS_TO_CITYSCAPES[n] for i, n in enumerate(self.vistas_names) if n in VISTAS_TO_CITYSCAPES}
        if not mapping:
            raise DatasetError(
                f"Mapillary config {config} names none of the v1.2 classes this adapter maps "
                f"(e.g. construction--flat--road); expected the v1.2 config"
            )
        self.lut = make_lut(mapping)

    def list_entries(self, split_name: str) -> list[SemanticEntry]:
        return pair_files(self.root, f"{split_name}/images", ".jpg", f"{split_name}/v1.2/labels", ".png")

    def convert_labels(self, labels: np.ndarray) -> np.ndarray:
        return apply_lut(labels, self.lut)

    def label_signature(self) -> str:
        return hashlib.sha1(self.lut.tobytes()).hexdigest()
