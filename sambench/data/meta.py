"""What the composition root learns about a dataset before building the method and evaluator
(as mmengine's ``dataset_meta``): one frozen object, read from ``dataset.dataset_meta``."""

from __future__ import annotations

from dataclasses import dataclass

#: Annotation formats whose ground-truth file an evaluator can score against.
ANNOTATION_FORMATS = ("coco", "lvis")


@dataclass(frozen=True)
class DatasetMeta:
    """A dataset's vocabulary and the facts evaluators need.

    Attributes:
        class_names: names indexed by class id (the dataset's vocabulary); empty if it has none.
        novel: one bool per class id (True = novel class, open-vocabulary splits), or None.
        ignore_index: label value of unlabelled pixels in semantic label maps (255), or None.
        annotation_format: ``"coco"`` or ``"lvis"``: the API that scores ``ann_file`` (mask AP);
            None = no ground-truth file to score against.
        category_ids: class id -> original category id of ``ann_file``, or None (identity).
        ann_file: absolute path of the ground-truth json, or None.
    """

    class_names: tuple[str, ...] = ()
    novel: tuple[bool, ...] | None = None
    ignore_index: int | None = None
    annotation_format: str | None = None
    category_ids: tuple[int, ...] | None = None
    ann_file: str | None = None

    def __post_init__(self) -> None:
        if self.annotation_format not in (None, *ANNOTATION_FORMATS):
            raise ValueError(f"annotation_format must be one of {ANNOTATION_FORMATS} or None, got {self.annotation_format!r}")
        if self.novel is not None and len(self.novel) != len(self.class_names):
            raise ValueError(f"{len(self.novel)} novel flags for {len(self.class_names)} classes")
        if self.category_ids is not None and len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.category_ids)} category ids for {len(self.class_names)} classes")
