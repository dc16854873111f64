"""ACDC (Adverse Conditions Dataset with Correspondences): Cityscapes' 19 classes under fog,
night, rain and snow.

Layout::

    <root>/rgb_anon/<condition>/<split>/<sequence>/<sequence>_frame_<6 digits>_rgb_anon.png
    <root>/gt/<condition>/<split>/<sequence>/<sequence>_frame_<6 digits>_gt_labelTrainIds.png

The downloads unpack as ``rgb_anon_trainvaltest/rgb_anon/`` and ``gt_trainval/gt/``; both
prefixes are accepted. Labels are Cityscapes trainIds (255 = ignore); no test labels are
distributed. Every sample's ``meta`` carries its ``condition``.
"""

from __future__ import annotations

from sambench.data.semantic import (
    CITYSCAPES_CLASSES,
    SemanticEntry,
    SemanticSegmentationDataset,
    check_choice,
    pair_files,
)
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS

CONDITIONS = ("fog", "night", "rain", "snow")
IMAGE_FOLDERS = ("rgb_anon", "rgb_anon_trainvaltest/rgb_anon")
LABEL_FOLDERS = ("gt", "gt_trainval/gt")


def condition_list(conditions) -> list[str]:
    """``"fog"`` / ``["night", "fog"]`` -> the valid conditions in canonical order."""
    if isinstance(conditions, str):
        conditions = [conditions]
    if conditions is None or not list(conditions):
        raise ConfigError(f"dataset 'acdc': conditions must name at least one of {', '.join(CONDITIONS)}")
    for condition in conditions:
        check_choice("acdc", "conditions", condition, CONDITIONS)
    return [c for c in CONDITIONS if c in conditions]


@DATASETS.register_module(name="acdc")
class AcdcDataset(SemanticSegmentationDataset):
    """ACDC semantic segmentation, sorted by condition, sequence and frame.

    Sample ``meta``: ``file_name`` (``rgb_anon/<condition>/<split>/<sequence>/..._rgb_anon.png``),
    ``prediction_path`` (``<condition>/<sequence>/<sequence>_frame_NNNNNN``) and ``condition``.

    Args:
        split: "train" (reads ``train_split``) or "eval" (``eval_split``).
        root: folder holding ``rgb_anon/`` and ``gt/`` (or the download's prefixed folders).
        conditions: conditions to read (fog, night, rain, snow); a string or a list.
        train_split / eval_split: ACDC split folders (train / val).
        max_samples: keep only the first N samples; None = all (the few-shot subset is
            :class:`~sambench.data.few_shot.FewShotSubset`, built by the composition root).
    """

    NAME = "acdc"
    ROOT_HINT = (
        "an ACDC folder holding rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png and "
        "gt/<condition>/<split>/<sequence>/*_gt_labelTrainIds.png "
        "(or rgb_anon_trainvaltest/rgb_anon and gt_trainval/gt)"
    )
    CLASS_NAMES = tuple(CITYSCAPES_CLASSES)

    def __init__(
        self,
        *,
        split: str,
        root: str,
        conditions: list[str] = CONDITIONS,
        train_split: str | None = None,
        eval_split: str | None = None,
        max_samples: int | None = None,
    ):
        self.conditions = condition_list(conditions)
        super().__init__(split=split, root=root, train_split=train_split, eval_split=eval_split, max_samples=max_samples)

    def _folder(self, candidates: tuple[str, ...], what: str) -> str:
        for candidate in candidates:
            if (self.root / candidate).is_dir():
                return candidate
        raise DatasetError(
            f"ACDC {what} folder not found under {self.root}: expected {' or '.join(candidates)} ({self.ROOT_HINT})"
        )

    def prepare(self) -> None:
        self.image_folder = self._folder(IMAGE_FOLDERS, "image")
        self.label_folder = self._folder(LABEL_FOLDERS, "label")

    def list_entries(self, split_name: str) -> list[SemanticEntry]:
        entries = []
        for condition in self.conditions:
            entries += pair_files(
                self.root, f"{self.image_folder}/{condition}/{split_name}", "_rgb_anon.png",
                f"{self.label_folder}/{condition}/{split_name}", "_gt_labelTrainIds.png",
                prediction_prefix=f"{condition}/", meta={"condition": condition},
                hint="ACDC distributes no test labels" if split_name == "test" else "",
            )
        return entries
