"""FSS-1000 one-shot semantic segmentation, the 240 test classes (HSNet ``data/fss.py``).

Layout: ``root/<class>/{1..10}.jpg`` with masks ``<n>.png`` (HSNet's ``FSS-1000/``), or the
same class folders under ``root/data/`` (Matcher's ``FSS-1000/data/``); the class list
``root/splits/test.txt`` (Matcher's place; HSNet ships it as ``data/splits/fss/test.txt``;
``split_file=`` points elsewhere). HSNet reads it as ``f.read().split('\\n')[:-1]`` in text mode
(the official file has CRLF endings and a final newline) and sorts it.

Episodes, as HSNet: one per query image; for each class in sorted order, the class folder's
files sorted as path strings (``1, 10, 2, ..., 9``) whose extension is ``jpg``; for episode
``i`` the support is ``choice(range(1, 11), 1, replace=False)[0]`` drawn from a dedicated
``np.random.RandomState(seed)`` until it is not the query (seed 0 = HSNet's test episodes,
drawn after ``np.random.seed(0)``). Masks: ``convert('L') >= 128``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sambench.data.base import inside_root, read_image_for, read_mask_rgb, resolve_root
from sambench.data.one_shot import OneShotDataset, split_path
from sambench.errors import DatasetError
from sambench.registry import DATASETS

ROOT_HINT = "an FSS-1000 folder holding <class>/{1..10}.jpg and .png (or data/<class>/...) and splits/test.txt"
SPLIT_HINT = (
    "the class list comes with HSNet (data/splits/fss/test.txt, github.com/juhongm999/hsnet) and Matcher "
    "(datasets/FSS-1000/splits/test.txt): copy it to <root>/splits/test.txt or set dataset.split_file=<path>"
)
SUPPORT_IDS = range(1, 11)


def read_class_list(path: Path) -> list[str]:
    """HSNet: ``sorted(f.read().split('\\n')[:-1])`` (text mode: CRLF reads as LF)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"FSS-1000 class list not found: {path}; {SPLIT_HINT}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read FSS-1000 class list {path} ({exc}); {SPLIT_HINT}") from None
    if text and not text.endswith("\n"):
        raise DatasetError(
            f"{path} does not end with a newline: HSNet drops the last line of the class list (split('\\n')[:-1]), "
            f"which would lose a class; add the final newline"
        )
    classes = sorted(text.split("\n")[:-1])
    if not classes or any(not c or c != c.strip() for c in classes):
        raise DatasetError(f"{path}: expected one class folder name per line, without empty lines or spaces")
    return classes


@DATASETS.register_module(name="fss1000")
class Fss1000Dataset(OneShotDataset):
    """FSS-1000 test classes: one :class:`Sample` per query image (see :mod:`sambench.data.one_shot`).

    Args:
        split: "train" or "eval"; both give the test episodes.
        root: the FSS-1000 folder (class folders directly in it or under ``data/``).
        seed: seed of the support draw (0 = HSNet's episodes).
        episodes_file: an ``episodes.json`` saved by an earlier run: its list instead of a draw.
        split_file: the class list; absolute, or relative to root (None = ``splits/test.txt``).
        max_samples: keep only the first N episodes.
    """

    NAME = "fss1000"

    def __init__(self, *, split: str, root: str, seed: int = 0, episodes_file: str | None = None,
                 split_file: str | None = None, max_samples: int | None = None):
        self.check_split(split)
        self.root = resolve_root(root, self.NAME, ROOT_HINT)
        self.split_path = split_path(self.root, split_file, "splits/test.txt")
        classes = read_class_list(self.split_path)
        data = self.root / "data"
        self.data_root = data if data.is_dir() and not (self.root / classes[0]).is_dir() else self.root
        self.class_ids = classes
        self.images = {c: self._class_images(c) for c in classes}
        self.set_episodes(seed=seed, count=None, episodes_file=episodes_file, max_samples=max_samples)

    def _class_images(self, class_name: str) -> list[str]:
        """``<class>/<file>`` names of the class folder's jpg files, sorted as HSNet sorts its glob."""
        folder = inside_root(self.data_root, class_name)
        if not folder.is_dir():
            raise DatasetError(f"FSS-1000 class folder not found: {folder} (class '{class_name}' of {self.split_path})")
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        jpgs = [f"{class_name}/{n}" for n in names if len(n.split(".")) > 1 and n.split(".")[1] == "jpg"]
        if not jpgs:
            raise DatasetError(f"FSS-1000 class folder {folder} holds no .jpg image")
        return jpgs

    def candidates(self, class_id) -> set[str]:
        return set(self.images[class_id])

    def draw(self, rng: np.random.RandomState, count: int | None) -> list[dict[str, Any]]:
        """HSNet's ``sample_episode`` for every query image in order (shot 1)."""
        episodes = []
        for class_name in self.class_ids:
            for query in self.images[class_name]:
                while True:  # keep sampling the support while it is the query
                    number = rng.choice(SUPPORT_IDS, 1, replace=False)[0]
                    support = f"{class_name}/{number}.jpg"
                    if support != query:
                        break
                episodes.append({"class": class_name, "query": query, "support": support})
        return episodes

    def image_path(self, name: str) -> Path:
        return inside_root(self.data_root, name)

    def mask_path(self, name: str) -> Path:
        """HSNet: the image's folder, its name up to the first '.', then ``.png``."""
        folder, file = name.rsplit("/", 1)
        return inside_root(self.data_root, f"{folder}/{file.split('.')[0]}.png")

    def files(self, name: str) -> list[Path]:
        return [self.image_path(name), self.mask_path(name)]

    def read(self, class_id, name: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.image_path(name), self.mask_path(name)
        mask_rgb = read_mask_rgb(mask_path)
        image = read_image_for(image_path, mask_path, mask_rgb)
        gray = np.asarray(Image.fromarray(mask_rgb).convert("L"))  # PIL's RGB -> L weights, as HSNet
        return image, gray >= 128
