"""Evaluator base: per-sample records gathered across ranks, sampler padding dropped."""

from __future__ import annotations

from typing import Any

from sambench.dist import all_gather_objects
from sambench.structures import Batch, Prediction


class SampleRecordEvaluator:
    """Keeps one small record per dataset index; ``compute`` sees every index exactly once.

    ``DistributedSampler`` pads the last round with repeated indices; gathering by index and
    keeping the first record makes 1-rank and N-rank evaluations identical.
    """

    def __init__(self) -> None:
        self.records: dict[int, Any] = {}

    def reset(self) -> None:
        self.records = {}

    def process(self, batch: Batch, predictions: list[Prediction]) -> None:
        for sample, prediction in zip(batch, predictions):
            self.records.setdefault(sample.index, self.record(sample, prediction))

    def record(self, sample, prediction) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def gathered(self) -> list[Any]:
        """Records of all ranks, one per dataset index, sorted by index."""
        merged: dict[int, Any] = {}
        for part in all_gather_objects(self.records):
            for index, rec in part.items():
                merged.setdefault(index, rec)
        return [merged[i] for i in sorted(merged)]

    def compute(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError
