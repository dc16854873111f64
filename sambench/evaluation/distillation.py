"""Feature distillation: how close the student's image embeddings are to the teacher's.

Per image the method reports ``Prediction.embedding_mse`` (mean squared error over the
256×64×64 embedding) and ``Prediction.embedding_cosine`` (mean over positions of the cosine similarity of the
256-d vectors); the evaluator averages them over the split (records gathered across ranks).
"""

from __future__ import annotations

import numpy as np

from sambench.evaluation.base import SampleRecordEvaluator
from sambench.registry import EVALUATORS


@EVALUATORS.register_module(name="embedding_distillation")
class EmbeddingDistillationEvaluator(SampleRecordEvaluator):
    def __init__(self, class_names: list[str] | None = None):
        super().__init__()

    def record(self, sample, prediction):
        return float(prediction.embedding_mse), float(prediction.embedding_cosine)

    def compute(self) -> dict:
        records = np.asarray(self.gathered(), dtype=np.float64).reshape(-1, 2)
        if not len(records):
            return {"mse": float("nan"), "cosine": float("nan"), "num_images": 0}
        return {"mse": float(records[:, 0].mean()), "cosine": float(records[:, 1].mean()), "num_images": int(len(records))}
