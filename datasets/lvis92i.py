"""LVIS-92i one-shot semantic segmentation (Matcher ``matcher/data/lvis.py``), 10 folds.

Layout (Matcher's): ``root/coco/{train2017,val2017}/*.jpg`` and ``root/lvis_val.pkl``, a dict
{category id: {image name relative to ``coco/``: {'annotations': [{'segmentation': polygons or
RLE}, ...]}}}, read with :func:`~sambench.data.safe_pickle.load_plain_pickle` (nothing in it is
executed; ``lvis_train.pkl`` is not needed for testing).

Classes: the categories with more than one image (shot 1), in the dict's order; fold ``f`` takes
``ids[f + 10 v]`` for ``v < len(ids) // 10`` (92 classes). Episode ``i`` uses class
``class_ids[i % 92]``; the query is ``choice(list(images), 1, replace=False)[0]`` from a
dedicated ``np.random.RandomState(seed)``, then the support the same way until it differs
(seed 0 = Matcher's test episodes, drawn after ``np.random.seed(0)``). Masks: the union of the
image's annotations of the class (polygons rasterised at the image size, as detectron2's
``polygons_to_bitmask``; RLE decoded). Class names are the category ids as strings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sambench.data.base import check_int, inside_root, read_image, resolve_root
from sambench.data.coco_format import decode_segmentation
from sambench.data.one_shot import OneShotDataset, split_path
from sambench.data.safe_pickle import load_plain_pickle
from sambench.errors import DatasetError
from sambench.registry import DATASETS

ROOT_HINT = "an LVIS folder holding coco/{train2017,val2017}/*.jpg and lvis_val.pkl"
NUM_FOLDS = 10
SHOT = 1
ANNOTATION_HINT = (
    "lvis_val.pkl is Matcher's LVIS-92i annotation file (lvis.zip, linked from Matcher's datasets/README.md): "
    "put it in <root> or set dataset.split_file=<path>"
)


def fold_classes(category_ids: list, fold: int) -> list:
    """Matcher: ``[ids[fold + 10 v] for v in range(len(ids) // 10)]``."""
    return [category_ids[fold + NUM_FOLDS * v] for v in range(len(category_ids) // NUM_FOLDS)]


def plain_segmentation(segmentation: Any) -> Any:
    """A pickled segmentation in the form :func:`decode_segmentation` checks: tuples as lists,
    bytes RLE counts as str."""
    if isinstance(segmentation, (list, tuple)):
        return [list(p) if isinstance(p, tuple) else p for p in segmentation]
    if isinstance(segmentation, dict):
        plain = dict(segmentation)
        if isinstance(plain.get("size"), tuple):
            plain["size"] = list(plain["size"])
        if isinstance(plain.get("counts"), bytes):
            plain["counts"] = plain["counts"].decode("ascii", errors="replace")
        return plain
    return segmentation


def stored_size(path: Path) -> tuple[int, int] | None:
    """(H, W) of an image file's stored pixels from its header; None when unreadable (the
    reader then says why)."""
    try:
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except Exception:
        return None


@DATASETS.register_module(name="lvis92i")
class Lvis92iDataset(OneShotDataset):
    """LVIS-92i: one :class:`Sample` per episode (see :mod:`sambench.data.one_shot`).

    Args:
        split: "train" or "eval"; both give the test episodes.
        root: the LVIS folder.
        fold: 0..9.
        episodes: how many episodes to draw (Matcher: 2300).
        seed: seed of the episode draw (0 = Matcher's episodes).
        episodes_file: an ``episodes.json`` saved by an earlier run: its list instead of a draw.
        split_file: the annotation pickle; absolute, or relative to root (None = ``lvis_val.pkl``).
        max_samples: keep only the first N episodes.
    """

    NAME = "lvis92i"

    def __init__(self, *, split: str, root: str, fold: int = 0, episodes: int = 2300, seed: int = 0,
                 episodes_file: str | None = None, split_file: str | None = None, max_samples: int | None = None):
        self.check_split(split)
        self.set_fold(fold, NUM_FOLDS)
        check_int(self.NAME, "episodes", episodes, 1, allow_none=False)
        self.root = resolve_root(root, self.NAME, ROOT_HINT)
        self.image_root = inside_root(self.root, "coco")
        self.split_path = split_path(self.root, split_file, "lvis_val.pkl")
        self.images = self._read_annotations()
        self.class_ids = list(self.images)
        self.set_episodes(seed=seed, count=episodes, episodes_file=episodes_file, max_samples=max_samples)

    def _read_annotations(self) -> dict[int, dict[str, list]]:
        """The fold's categories, in fold order -> {image name: [segmentations]} (dict order kept)."""
        path = self.split_path
        if not path.is_file():
            raise DatasetError(f"LVIS-92i annotation file not found: {path}; {ANNOTATION_HINT}")
        data = load_plain_pickle(path, hint=ANNOTATION_HINT)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise DatasetError(f"{path}: expected Matcher's dict {{category id: {{image name: {{'annotations': [...]}}}}}}")
        category_ids = [c for c in data if len(data[c]) > SHOT]
        classes = fold_classes(category_ids, self.fold)
        if not classes:
            raise DatasetError(f"{path} has {len(category_ids)} categories with more than {SHOT} image(s); "
                               f"{NUM_FOLDS} folds need at least {NUM_FOLDS}")
        images = {}
        for class_id in classes:
            images[class_id] = {}
            for name, info in data[class_id].items():
                annotations = info.get("annotations") if isinstance(info, dict) else None
                if not isinstance(name, str) or not isinstance(annotations, list) or not annotations or not all(
                        isinstance(a, dict) and "segmentation" in a for a in annotations):
                    raise DatasetError(
                        f"{path}: category {class_id}, image {name!r:.80}: expected {{'annotations': "
                        f"[{{'segmentation': ...}}, ...]}} with at least one annotation"
                    )
                images[class_id][name] = [plain_segmentation(a["segmentation"]) for a in annotations]
        return images

    def candidates(self, class_id) -> set[str]:
        return set(self.images[class_id])

    def draw(self, rng: np.random.RandomState, count: int | None) -> list[dict[str, Any]]:
        """Matcher's ``load_frame`` for episodes ``0..count-1`` (class ``idx % 92``, shot 1)."""
        episodes = []
        for index in range(count):
            class_id = self.class_ids[index % len(self.class_ids)]
            names = list(self.images[class_id].keys())
            query = str(rng.choice(names, 1, replace=False)[0])
            while True:  # keep sampling the support while it is the query
                support = str(rng.choice(names, 1, replace=False)[0])
                if support != query:
                    break
            episodes.append({"class": class_id, "query": query, "support": support})
        return episodes

    def image_path(self, name: str) -> Path:
        return inside_root(self.image_root, name)

    def files(self, name: str) -> list[Path]:
        return [self.image_path(name)]

    def read(self, class_id, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The image (its stored pixels' size is the annotation grid: Matcher rasterises at the
        PIL size) and the union of its annotations of ``class_id``."""
        path = self.image_path(name)
        segmentations = self.images[class_id][name]
        grid = next((tuple(s["size"]) for s in segmentations if isinstance(s, dict) and "size" in s), None)
        image = read_image(path, expected_size=grid or stored_size(path))
        height, width = image.shape[:2]
        mask = np.zeros((height, width), dtype=bool)
        for segmentation in segmentations:
            try:
                mask |= decode_segmentation(segmentation, height, width)
            except DatasetError as exc:
                raise DatasetError(f"{self.split_path}: category {class_id}, image {name}: {exc}") from None
        return image, mask
