"""Hooks called by the training loop: logging, periodic evaluation, checkpoints."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class Hook:
    """Override any of these; ``trainer`` is the running :class:`~sambench.engine.loop.Trainer`."""

    def before_run(self, trainer) -> None: ...

    def after_step(self, trainer, losses: dict[str, float]) -> None: ...

    def after_run(self, trainer) -> None: ...


class LossLoggingHook(Hook):
    """Losses, LR and throughput every ``every`` steps to the run logger (JSONL/wandb)."""

    def __init__(self, every: int):
        self.every = max(1, every)
        self.started = time.perf_counter()
        self.last_step = 0

    def before_run(self, trainer) -> None:
        self.started, self.last_step = time.perf_counter(), trainer.step

    def after_step(self, trainer, losses) -> None:
        if trainer.step % self.every and trainer.step != trainer.max_steps:
            return
        elapsed = time.perf_counter() - self.started
        samples = (trainer.step - self.last_step) * trainer.global_batch_size
        record = {**losses, "lr": trainer.optimizer.param_groups[0]["lr"], "samples_per_s": samples / max(elapsed, 1e-9)}
        trainer.run_logger.log_metrics(record, trainer.step, prefix="train/")
        self.started, self.last_step = time.perf_counter(), trainer.step


class EvaluationHook(Hook):
    """Evaluate every ``every`` steps (if set) and at the end; keeps the last metrics."""

    def __init__(self, every: int | None, at_end: bool = True):
        self.every, self.at_end = every, at_end

    def after_step(self, trainer, losses) -> None:
        if self.every and trainer.step % self.every == 0 and trainer.step != trainer.max_steps:
            trainer.run_evaluation()

    def after_run(self, trainer) -> None:
        if self.at_end:
            trainer.run_evaluation()


class CheckpointHook(Hook):
    """Save ``checkpoints/last.pt`` every ``every`` steps (if set) and at the end."""

    def __init__(self, every: int | None):
        self.every = every

    def after_step(self, trainer, losses) -> None:
        if self.every and trainer.step % self.every == 0:
            trainer.save_checkpoint()

    def after_run(self, trainer) -> None:
        trainer.save_checkpoint()
