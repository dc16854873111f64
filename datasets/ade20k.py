"""ADE20K semantic segmentation (SceneParsing ADEChallengeData2016, 150 classes).

Layout::

    <root>/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
    <root>/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png

``root`` may also be the ``ADEChallengeData2016`` folder itself. Annotations hold 0..150 with
0 = "other objects" (not evaluated): ``reduce_zero_label`` gives classes 0..149 and 255 =
ignore. Class names come from ``objectInfo150.txt`` (tab-separated ``Idx Ratio Train Val
Name``; the first name of each ``Name`` field) when the root holds one, else the built-in list.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sambench.data.semantic import SemanticEntry, SemanticSegmentationDataset, pair_files, reduce_zero_label
from sambench.errors import DatasetError
from sambench.registry import DATASETS

FOLDER = "ADEChallengeData2016"
OBJECT_INFO = "objectInfo150.txt"
#: The first name of each ``Name`` field of objectInfo150.txt, in Idx order 1..150.
ADE20K_CLASSES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
]
SPLIT_FOLDERS = ("training", "validation")


def read_object_info(path: Path) -> list[str]:
    """The 150 class names of an ``objectInfo150.txt`` (first name of each ``Name``, Idx order)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} ({exc})") from None
    names: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if not line.strip() or fields[0].strip() == "Idx":
            continue
        if len(fields) < 5 or not fields[0].strip().isdigit():
            raise DatasetError(
                f"{path} line {number}: expected 5 tab-separated fields 'Idx Ratio Train Val Name', got {line!r}"
            )
        names[int(fields[0])] = re.split(r"[,;]", fields[4])[0].strip()
    if sorted(names) != list(range(1, 151)) or not all(names.values()):
        raise DatasetError(f"{path}: expected named classes with Idx 1..150, found {len(names)} rows")
    return [names[i] for i in range(1, 151)]


@DATASETS.register_module(name="ade20k")
class Ade20kDataset(SemanticSegmentationDataset):
    """ADE20K (SceneParsing) with reduce_zero_label: 150 classes, 255 = ignore.

    Sample ``meta``: ``file_name`` (``images/<split>/ADE_..._%08d.jpg``, relative to
    ``ADEChallengeData2016``) and ``prediction_path`` (``ADE_..._%08d``).

    Args:
        split: "train" (reads ``train_split``) or "eval" (``eval_split``).
        root: ``ADEChallengeData2016`` or the folder that holds it.
        train_split / eval_split: split folders (training / validation).
        max_samples: keep only the first N samples; None = all (the few-shot subset is
            :class:`~sambench.data.few_shot.FewShotSubset`, built by the composition root).
    """

    NAME = "ade20k"
    ROOT_HINT = f"{FOLDER} (holding images/ and annotations/) or the folder that contains it"
    CLASS_NAMES = tuple(ADE20K_CLASSES)
    SPLIT_NAMES = ("training", "validation")
    names_file: Path | None = None  # objectInfo150 when the dataset has one (read in locate_root)

    def locate_root(self, root: Path) -> Path:
        self.given_root = root
        for candidate in (root / FOLDER, root):
            if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
                return candidate
        raise DatasetError(
            f"ADE20K layout not found under {root}: expected {FOLDER}/images/ and {FOLDER}/annotations/ "
            f"({self.ROOT_HINT})"
        )

    def prepare(self) -> None:
        for folder in (self.root, self.given_root):
            if (folder / OBJECT_INFO).is_file():
                self.names_file = folder / OBJECT_INFO
                self.class_names = read_object_info(self.names_file)
                return

    def list_entries(self, split_name: str) -> list[SemanticEntry]:
        return pair_files(
            self.root, f"images/{split_name}", ".jpg", f"annotations/{split_name}", ".png",
            hint=f"split folders are {' / '.join(SPLIT_FOLDERS)}",
        )

    def convert_labels(self, labels: np.ndarray) -> np.ndarray:
        return reduce_zero_label(labels)

    def label_signature(self) -> str:
        return "reduce_zero_label"
