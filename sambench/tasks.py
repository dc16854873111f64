"""The tasks a method can solve: what a sample must carry, how predictions are scored and which
files ``save_predictions`` writes, in one place.

A method declares one ``TASK = tasks.X``; a dataset the ``TASKS = (tasks.X, ...)`` it can serve
(:func:`sambench.registry.check_pairing`). The composition root builds the evaluator with
:meth:`Task.build_evaluator` from the dataset's :class:`~sambench.data.meta.DatasetMeta`, and the
evaluation loop writes prediction files with :attr:`Task.writer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from sambench.data.meta import DatasetMeta
from sambench.evaluation import prediction_files as files
from sambench.evaluation.distillation import EmbeddingDistillationEvaluator
from sambench.evaluation.instance_iou import InstanceIoUEvaluator
from sambench.evaluation.open_vocab import OpenVocabEvaluator
from sambench.evaluation.personalization import PersonalizationEvaluator
from sambench.evaluation.referring import ReferringEvaluator
from sambench.evaluation.semantic import SemanticEvaluator
from sambench.structures import Sample

#: ``factory(meta, output_dir)`` -> an evaluator (``reset / process / compute``); ``output_dir``
#: is the run folder for result files (None = none).
EvaluatorFactory = Callable[[DatasetMeta, "str | None"], object]


@dataclass(frozen=True)
class Task:
    """One task.

    Attributes:
        name: the task's name (in messages and ``TASK`` comparisons).
        sample_fields: :class:`~sambench.structures.Sample` fields an evaluation sample must set
            (not None).
        evaluator: builds the task's evaluator from the dataset's metadata.
        writer: the prediction files of ``save_predictions``.
    """

    name: str
    sample_fields: tuple[str, ...]
    evaluator: EvaluatorFactory
    writer: files.PredictionWriter

    def __str__(self) -> str:
        return self.name

    def build_evaluator(self, meta: DatasetMeta, output_dir: str | None = None):
        """The evaluator for a dataset with metadata ``meta``."""
        return self.evaluator(meta, output_dir)

    def missing_fields(self, sample: Sample) -> list[str]:
        """The :attr:`sample_fields` that ``sample`` leaves None."""
        return [name for name in self.sample_fields if getattr(sample, name) is None]


def _class_names(meta: DatasetMeta) -> list[str] | None:
    return list(meta.class_names) or None


def _instance_iou(meta: DatasetMeta, output_dir: str | None) -> InstanceIoUEvaluator:
    return InstanceIoUEvaluator(class_names=_class_names(meta))


def _personalization(meta: DatasetMeta, output_dir: str | None) -> PersonalizationEvaluator:
    return PersonalizationEvaluator(class_names=_class_names(meta))


def _referring(meta: DatasetMeta, output_dir: str | None) -> ReferringEvaluator:
    return ReferringEvaluator(class_names=_class_names(meta))


def _semantic(meta: DatasetMeta, output_dir: str | None) -> SemanticEvaluator:
    return SemanticEvaluator(class_names=_class_names(meta))


def _open_vocab(meta: DatasetMeta, output_dir: str | None) -> OpenVocabEvaluator:
    return OpenVocabEvaluator.from_meta(meta, output_dir=output_dir)


def _video_object(meta: DatasetMeta, output_dir: str | None):
    from sambench.evaluation.video import VideoObjectEvaluator  # the DAVIS J/F implementation

    return VideoObjectEvaluator(class_names=_class_names(meta))


def _distillation(meta: DatasetMeta, output_dir: str | None) -> EmbeddingDistillationEvaluator:
    return EmbeddingDistillationEvaluator(class_names=_class_names(meta))


#: GT box/point prompts -> instance masks (mean IoU).
PROMPTED_INSTANCE = Task(name="prompted_instance", sample_fields=("image", "masks"),
                         evaluator=_instance_iou, writer=files.INSTANCE_IDS)
#: reference views of a concept -> its mask in a target image (mIoU, bIoU).
PERSONALIZE = Task(name="personalize", sample_fields=("image", "masks", "references"),
                   evaluator=_personalization, writer=files.INSTANCE_IDS)
#: a referring expression -> the referent's mask (cIoU, mIoU); DIT also writes its logits.
REFERRING = Task(name="referring", sample_fields=("image", "masks", "texts"),
                 evaluator=_referring, writer=files.MASK_AND_LOGITS)
#: a few labelled images per class -> a label map (mIoU).
SEMANTIC_FEW_SHOT = Task(name="semantic_few_shot", sample_fields=("image", "semantic", "class_names"),
                         evaluator=_semantic, writer=files.SEMANTIC_LABELS)
#: GT prompts or detections + a vocabulary -> masks and classes (IoU/Acc, base/novel; mask AP).
OPEN_VOCAB_INSTANCE = Task(name="open_vocab_instance",
                           sample_fields=("image", "masks", "boxes", "class_ids", "class_names"),
                           evaluator=_open_vocab, writer=files.INSTANCES_AND_LABELS)
#: images only: a student learns a teacher's embeddings (MSE, cosine).
IMAGE_DISTILLATION = Task(name="image_distillation", sample_fields=("image",),
                          evaluator=_distillation, writer=files.NOTHING)

#: first-frame masks of a video's objects -> their masks in every frame (DAVIS J, F, J&F).
VIDEO_OBJECT = Task(name="video_object", sample_fields=("image", "frames", "frame_labels", "references"),
                    evaluator=_video_object, writer=files.VIDEO_LABELS)

ALL = (PROMPTED_INSTANCE, PERSONALIZE, REFERRING, SEMANTIC_FEW_SHOT, OPEN_VOCAB_INSTANCE, IMAGE_DISTILLATION,
       VIDEO_OBJECT)
