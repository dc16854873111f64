"""BDD100K semantic segmentation (the 10K set; Cityscapes' 19 classes, 255 = ignore).

Layout::

    <root>/bdd100k/images/10k/{train,val,test}/<name>.jpg
    <root>/bdd100k/labels/sem_seg/masks/{train,val}/<name>.png    # one channel, trainIds

``root`` may be the ``bdd100k`` folder itself or the folder that holds it. The masks already
hold Cityscapes trainIds: no conversion.
"""

from __future__ import annotations

from pathlib import Path

from sambench.data.semantic import CITYSCAPES_CLASSES, SemanticEntry, SemanticSegmentationDataset, pair_files
from sambench.errors import DatasetError
from sambench.registry import DATASETS

IMAGE_DIR = "images/10k"
MASK_DIR = "labels/sem_seg/masks"


@DATASETS.register_module(name="bdd100k")
class Bdd100kDataset(SemanticSegmentationDataset):
    """BDD100K 10K semantic segmentation, sorted by file name.

    Sample ``meta``: ``file_name`` (``images/10k/<split>/<name>.jpg``, relative to ``bdd100k/``)
    and ``prediction_path`` (``<name>``).

    Args:
        split: "train" (reads ``train_split``) or "eval" (``eval_split``).
        root: ``bdd100k/`` or the folder that holds it.
        train_split / eval_split: split folders (train / val).
        max_samples: keep only the first N samples; None = all (the few-shot subset is
            :class:`~sambench.data.few_shot.FewShotSubset`, built by the composition root).
    """

    NAME = "bdd100k"
    ROOT_HINT = (
        f"bdd100k/ (holding {IMAGE_DIR}/<split>/*.jpg and {MASK_DIR}/<split>/*.png) or the folder that contains it"
    )
    CLASS_NAMES = tuple(CITYSCAPES_CLASSES)

    def locate_root(self, root: Path) -> Path:
        for candidate in (root, root / "bdd100k"):
            if (candidate / IMAGE_DIR).is_dir():
                return candidate
        raise DatasetError(
            f"BDD100K layout not found under {root}: expected {IMAGE_DIR}/ or bdd100k/{IMAGE_DIR}/ ({self.ROOT_HINT})"
        )

    def list_entries(self, split_name: str) -> list[SemanticEntry]:
        return pair_files(self.root, f"{IMAGE_DIR}/{split_name}", ".jpg", f"{MASK_DIR}/{split_name}", ".png")
