"""The data contract between datasets, methods and evaluators.

A dataset returns one :class:`Sample` per item; the loader collates them into a
:class:`Batch` (a list: images differ in size); a method's ``predict`` returns one
:class:`Prediction` per sample. Images are kept in their original resolution as uint8 RGB
arrays; every resizing to SAM's 1024 frame happens inside the SAM wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch


@dataclass
class Reference:
    """One reference view of a concept (one-shot / few-shot personalisation).

    Attributes:
        image: H×W×3 uint8 RGB.
        mask_rgb: H×W×3 uint8, the mask file as read in RGB (a PerSeg palette index 1 reads as
            (128, 0, 0), a 0/255 mask as white): PerSAM's official preprocessing depends on it.
        name: e.g. ``"cat/00"``.
    """

    image: np.ndarray
    mask_rgb: np.ndarray
    name: str = ""

    @property
    def mask(self) -> np.ndarray:
        """H×W bool foreground (red channel > 0, as the official PerSAM code reads it)."""
        return self.mask_rgb[..., 0] > 0

    @classmethod
    def from_mask(cls, image: np.ndarray, mask: np.ndarray, name: str = "") -> "Reference":
        """A reference from an H×W bool mask, kept as a 0/255 mask in all three channels (how a
        binary mask file reads in RGB)."""
        mask_rgb = np.repeat((np.asarray(mask, dtype=bool).astype(np.uint8) * 255)[..., None], 3, axis=-1)
        return cls(image=image, mask_rgb=mask_rgb, name=name)


@dataclass
class Sample:
    """One image and its annotations.

    Attributes:
        index: position in the dataset (used to drop DDP sampler padding in evaluation).
        image: H×W×3 uint8 RGB.
        masks: N×H×W bool instance masks, or None.
        boxes: N×4 float32 boxes, xyxy in original pixels, or None.
        points: N×P×2 float32 point prompts (x, y) in original pixels, or None.
        point_labels: N×P int64 (1 foreground, 0 background), or None.
        class_ids: N int64 dataset-contiguous class indices, or None.
        class_names: names indexed by class id (the dataset's vocabulary), or None.
        semantic: H×W int64 label map (255 = ignore), or None.
        references: the concept's reference views for personalisation tasks, or None.
        texts: referring expressions of the (single) referent, or None: exactly one in
            evaluation samples; in training samples all of the object's expressions (the method
            draws one per step).
        frames: video samples: the T frames, each H×W×3 uint8 RGB (``frames[0]`` is ``image``);
            a sequence that may read each frame when indexed; or None.
        frame_labels: video samples: T×H×W uint8 object ids per frame (0 background, k = object
            k, 255 void), or None.
        meta: free-form provenance (file name, image id, annotation ids, ...). One-shot and video
            datasets set ``concept``: a file-name-safe name of the reference set (PerSAM-F saves
            its fitted weights under it).
    """

    index: int
    image: np.ndarray
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    class_ids: torch.Tensor | None = None
    class_names: list[str] | None = None
    semantic: torch.Tensor | None = None
    references: list[Reference] | None = None
    texts: list[str] | None = None
    frames: Sequence[np.ndarray] | None = None
    frame_labels: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """Original (H, W)."""
        return int(self.image.shape[0]), int(self.image.shape[1])

    @property
    def num_instances(self) -> int:
        return 0 if self.masks is None else int(self.masks.shape[0])


@dataclass
class Batch:
    """A list of samples (no padding: SAM resizes each image itself)."""

    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def collate(samples: list[Sample]) -> Batch:
    """DataLoader ``collate_fn``: keep samples as they are."""
    return Batch(list(samples))


@dataclass
class Detection:
    """One detector-prompted instance (open-vocabulary detection mode; scored as mask AP).

    Attributes:
        bbox: the prompt box, xyxy in original pixels.
        score: confidence (e.g. detector score × class probability).
        class_id: predicted dataset-contiguous class index.
        mask: H×W bool mask at the original image size.
    """

    bbox: list[float]
    score: float
    class_id: int
    mask: torch.Tensor


@dataclass
class Prediction:
    """A method's output for one sample.

    Attributes:
        index: the sample's dataset index.
        masks: N×H×W bool masks at the original image size (one per prompt / instance).
        scores: N float32 confidence (SAM's predicted IoU or a classifier score), or None.
        class_ids: N int64 predicted classes, or None.
        semantic: H×W int64 predicted label map, or None.
        logits: mask logits before the threshold (DIT: 512×512 float32 on its letterboxed
            canvas), written as ``.npy`` beside the mask PNG; or None.
        detections: detection-mode outputs (open-vocabulary mask AP), or None (not detection
            mode; an empty list = no detection in this image).
        embedding_mse: image distillation: mean squared error of the student's 256×64×64
            embedding to the teacher's, or None.
        embedding_cosine: image distillation: mean over positions of the cosine similarity of
            the 256-d vectors, or None.
        instance_names: one file name per mask (OV-SAM: ``<image_id>_<ann_id>``) for per-instance
            PNGs, or None (no per-instance files).
        instance_labels: one ``{"class_id", "class_name", "score"}`` per mask for
            ``predictions/labels.json``, or None.
        fallbacks: how many times the method fell back to a default output (PerSAM: empty
            masks), summed by the personalization evaluator.
        frame_labels: video: T×H×W uint8 predicted object ids per frame (0 background, k =
            the sample's object k; frame 0 is the given first-frame annotation), or None.
    """

    index: int
    masks: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    class_ids: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    detections: list[Detection] | None = None
    embedding_mse: float | None = None
    embedding_cosine: float | None = None
    instance_names: list[str] | None = None
    instance_labels: list[dict[str, Any]] | None = None
    fallbacks: int = 0
    frame_labels: torch.Tensor | None = None
