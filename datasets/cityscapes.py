"""Cityscapes semantic segmentation (19 evaluation classes, trainIds, 255 = ignore).

Layout (cityscapesScripts)::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelTrainIds.png   # or _labelIds.png

``*_labelTrainIds.png`` is not in the download: cityscapesScripts'
``createTrainIdLabelImgs`` writes it from the polygons. Without it, ``label_type=labelIds``
reads the shipped ``*_labelIds.png`` and converts them with the labelId -> trainId table.
"""

from __future__ import annotations

import numpy as np

from sambench.data.semantic import (
    CITYSCAPES_CLASSES,
    LABEL_ID_TO_TRAIN_ID,
    SemanticEntry,
    SemanticSegmentationDataset,
    apply_lut,
    check_choice,
    pair_files,
)
from sambench.registry import DATASETS

LABEL_TYPES = ("labelTrainIds", "labelIds")
TRAIN_ID_HINT = (
    "labelTrainIds files are made by cityscapesScripts' createTrainIdLabelImgs; "
    "or set dataset.label_type=labelIds to read the shipped labelIds"
)


@DATASETS.register_module(name="cityscapes")
class CityscapesDataset(SemanticSegmentationDataset):
    """Cityscapes fine annotations, sorted by city then frame.

    Sample ``meta``: ``file_name`` (``leftImg8bit/<split>/<city>/..._leftImg8bit.png``),
    ``prediction_path`` (``<city>/<city>_<seq>_<frame>``) and ``city``.

    Args:
        split: "train" (reads ``train_split``) or "eval" (``eval_split``).
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        label_type: "labelTrainIds" (files hold trainIds) or "labelIds" (converted here).
        train_split / eval_split: Cityscapes split folders (train / val / test).
        max_samples: keep only the first N samples; None = all (the few-shot subset is
            :class:`~sambench.data.few_shot.FewShotSubset`, built by the composition root).
    """

    NAME = "cityscapes"
    ROOT_HINT = (
        "a Cityscapes folder holding leftImg8bit/<split>/<city>/*_leftImg8bit.png and "
        "gtFine/<split>/<city>/*_gtFine_<label_type>.png"
    )
    CLASS_NAMES = tuple(CITYSCAPES_CLASSES)

    def __init__(
        self,
        *,
        split: str,
        root: str,
        label_type: str = "labelTrainIds",
        train_split: str | None = None,
        eval_split: str | None = None,
        max_samples: int | None = None,
    ):
        check_choice(self.NAME, "label_type", label_type, LABEL_TYPES)
        self.label_type = label_type
        super().__init__(split=split, root=root, train_split=train_split, eval_split=eval_split, max_samples=max_samples)

    def list_entries(self, split_name: str) -> list[SemanticEntry]:
        entries = pair_files(
            self.root, f"leftImg8bit/{split_name}", "_leftImg8bit.png", f"gtFine/{split_name}",
            f"_gtFine_{self.label_type}.png", hint=TRAIN_ID_HINT if self.label_type == "labelTrainIds" else "",
        )
        return [
            SemanticEntry(e.image, e.label, e.prediction_path, {"city": e.prediction_path.split("/")[0]})
            for e in entries
        ]

    def convert_labels(self, labels: np.ndarray) -> np.ndarray:
        return apply_lut(labels, LABEL_ID_TO_TRAIN_ID) if self.label_type == "labelIds" else labels

    def label_signature(self) -> str:
        return self.label_type
