"""COCO-20i one-shot semantic segmentation (HSNet ``data/coco.py``, Matcher ``matcher/data/coco.py``).

Layout (Matcher's): ``root/{train2014,val2014}/COCO_*.jpg``, the HSNet authors' semantic masks
``root/annotations/{train2014,val2014}/<same stem>.png`` (value = class index + 1, 0 background)
and the split file ``root/splits/val/fold<fold>.pkl`` (HSNet ships the same files as
``data/splits/coco/val/fold<fold>.pkl``; ``split_file=`` points elsewhere). The pickle is a dict
{class index 0..79: ['val2014/COCO_val2014_000000429717.jpg', ...]}; it is read with
:func:`~sambench.data.safe_pickle.load_plain_pickle` (nothing in it is executed).

Fold ``i`` evaluates the 20 classes ``i + 4k``. Episode draw, as HSNet's ``load_frame`` with a
dedicated ``np.random.RandomState(seed)`` (seed 0 = HSNet's and Matcher's test episodes, which
they draw after ``np.random.seed(0)``): ``class = choice(class_ids, 1, replace=False)[0]``,
``query = choice(images[class], 1, replace=False)[0]``, then ``support`` the same way until it
differs from the query. Masks: ``mask == class + 1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sambench.data.base import check_int, inside_root, read_image_for, read_label_png, resolve_root
from sambench.data.one_shot import OneShotDataset, split_path
from sambench.data.safe_pickle import load_plain_pickle
from sambench.errors import DatasetError
from sambench.registry import DATASETS

ROOT_HINT = "a COCO2014 folder holding {train2014,val2014}/COCO_*.jpg, annotations/{train2014,val2014}/*.png and splits/val/fold<i>.pkl"
NUM_FOLDS = 4
NUM_CLASSES = 80
#: The 80 COCO classes in category-id order (class index = position; mask value = index + 1).
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
SPLIT_HINT = (
    "the split files come with Matcher (datasets/COCO2014/splits/val/fold<i>.pkl) and HSNet "
    "(data/splits/coco/val/fold<i>.pkl, github.com/juhongm999/hsnet): copy them to <root>/splits/val/ "
    "or set dataset.split_file=<path>"
)


def fold_classes(fold: int) -> list[int]:
    """Fold ``fold``'s 20 test class indices ``fold + 4k`` (HSNet ``build_class_ids``)."""
    return [fold + NUM_FOLDS * k for k in range(NUM_CLASSES // NUM_FOLDS)]


@DATASETS.register_module(name="coco20i")
class Coco20iDataset(OneShotDataset):
    """COCO-20i: one :class:`Sample` per episode (see :mod:`sambench.data.one_shot`).

    Args:
        split: "train" or "eval"; both give the test episodes (the methods have no training split).
        root: the COCO2014 folder.
        fold: 0..3.
        episodes: how many episodes to draw (HSNet: 1000).
        seed: seed of the episode draw (0 = HSNet's episodes).
        episodes_file: an ``episodes.json`` saved by an earlier run: its list instead of a draw.
        split_file: the fold's ``.pkl``; absolute, or relative to root (None = ``splits/val/fold<fold>.pkl``).
        max_samples: keep only the first N episodes.
    """

    NAME = "coco20i"

    def __init__(self, *, split: str, root: str, fold: int = 0, episodes: int = 1000, seed: int = 0,
                 episodes_file: str | None = None, split_file: str | None = None, max_samples: int | None = None):
        self.check_split(split)
        self.set_fold(fold, NUM_FOLDS)
        check_int(self.NAME, "episodes", episodes, 1, allow_none=False)
        self.root = resolve_root(root, self.NAME, ROOT_HINT)
        self.mask_root = inside_root(self.root, "annotations")
        self.class_ids = fold_classes(fold)
        self.split_path = split_path(self.root, split_file, f"splits/val/fold{fold}.pkl")
        self.images = self._read_split()
        self.set_episodes(seed=seed, count=episodes, episodes_file=episodes_file, max_samples=max_samples)

    def class_name(self, class_id) -> str:
        return COCO_CLASS_NAMES[class_id]

    def _read_split(self) -> dict[int, np.ndarray]:
        """The fold's classes -> their image names (as listed, order kept)."""
        path = self.split_path
        if not path.is_file():
            raise DatasetError(f"COCO-20i split file not found: {path}; {SPLIT_HINT}")
        data = load_plain_pickle(path, hint=f"expected HSNet's fold{self.fold}.pkl; {SPLIT_HINT}")
        if not isinstance(data, dict):
            raise DatasetError(f"{path} holds a {type(data).__name__}; expected HSNet's dict {{class index: [image names]}}")
        images = {}
        for class_id in self.class_ids:
            names = data.get(class_id)
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise DatasetError(
                    f"{path} has no image list for class {class_id} ({COCO_CLASS_NAMES[class_id]}) of fold {self.fold} "
                    f"(is it the val split file of another fold?)"
                )
            if len(set(names)) < 2:
                raise DatasetError(
                    f"{path} lists {len(set(names))} image(s) for class {class_id} ({COCO_CLASS_NAMES[class_id]}); "
                    f"an episode needs a query and a different support"
                )
            for name in names:
                if ".jpg" not in name:
                    raise DatasetError(f"{path} lists '{name}' for class {class_id}; expected a .jpg path such as "
                                       f"val2014/COCO_val2014_000000429717.jpg")
            images[class_id] = np.asarray(names)
        return images

    def candidates(self, class_id) -> set[str]:
        return set(self.images[class_id].tolist())

    def draw(self, rng: np.random.RandomState, count: int | None) -> list[dict[str, Any]]:
        """HSNet's ``load_frame`` draw, ``count`` times (shot 1)."""
        episodes = []
        for _ in range(count):
            class_id = int(rng.choice(self.class_ids, 1, replace=False)[0])
            query = str(rng.choice(self.images[class_id], 1, replace=False)[0])
            while True:  # keep sampling the support while it is the query
                support = str(rng.choice(self.images[class_id], 1, replace=False)[0])
                if support != query:
                    break
            episodes.append({"class": class_id, "query": query, "support": support})
        return episodes

    def image_path(self, name: str) -> Path:
        return inside_root(self.root, name)

    def mask_path(self, name: str) -> Path:
        """HSNet: ``annotations/<name up to '.jpg'>.png``."""
        return inside_root(self.mask_root, name[:name.index(".jpg")] + ".png")

    def files(self, name: str) -> list[Path]:
        return [self.image_path(name), self.mask_path(name)]

    def read(self, class_id, name: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.image_path(name), self.mask_path(name)
        labels = read_label_png(mask_path)
        return read_image_for(image_path, mask_path, labels), labels == class_id + 1
