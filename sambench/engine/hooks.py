"""Hooks: what happens around the optimizer steps. Each owns its behaviour and its state.

The trainer calls every hook in list order after every optimizer step (``after_step``) and at
``after_run``; at ``before_run`` hooks with ``restores_state`` (the checkpoint hook, which
resumes the run there) come first, so every other hook starts from the resumed state. A hook with a ``state_key`` has its
``state_dict()`` saved under that top-level key of the checkpoint and given back through
``load_state_dict`` on resume (the :class:`CheckpointHook` collects them). The usual order:
``EMAHook`` first (the averages follow the step), logging, evaluation, extra hooks, and
``CheckpointHook`` last (it saves what the others have just updated).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from sambench import dist
from sambench.checkpoint import (
    LAST, load_checkpoint, load_trainable, rng_state, save_atomic, set_rng_state, tensor_bytes,
)
from sambench.engine.cost import parameter_counts, peak_memory_mib
from sambench.engine.ema import ParameterEMA
from sambench.engine.evaluate import evaluate
from sambench.errors import CheckpointError, ConfigError
from sambench.files import megabytes, remove_stale_temporaries

log = logging.getLogger(__name__)
#: top-level checkpoint keys written by the checkpoint hook itself ("ema" is the EMA hook's)
CHECKPOINT_KEYS = ("step", "trainable", "optimizer", "scheduler", "scaler", "ema", "rng", "meta")


class Hook:
    """Override any of these; ``trainer`` is the running :class:`~sambench.engine.loop.Trainer`
    (``step``, ``max_steps``, ``method``, ``params``, ``optimizer``, ``scheduler``, ``scaler``,
    ``device``, ``precision``, ``metrics``, ``hooks``)."""

    #: checkpoint key of this hook's state; None: the hook keeps no state across a resume
    state_key: str | None = None
    #: True: ``before_run`` before the other hooks' (it restores the run's state)
    restores_state: bool = False

    def before_run(self, trainer) -> None: ...

    def after_step(self, trainer, losses: dict[str, float]) -> None: ...

    def after_run(self, trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class LossLoggingHook(Hook):
    """Losses, LR and the cost of training every ``every`` steps to the run logger (JSONL/wandb):
    ``step_time_s`` (seconds per optimizer step, mean over the window), ``samples_per_s`` (over
    the window's steps; hooks such as evaluation excluded) and ``peak_mem_mib``; the parameter
    counts once, at the start (:mod:`sambench.engine.cost`). ``global_batch_size``: samples per
    optimizer step over all ranks. :meth:`cost` gives the run's means for ``cost.json``."""

    def __init__(self, *, run_logger, every: int = 10, global_batch_size: int = 1):
        self.run_logger, self.every, self.global_batch_size = run_logger, max(1, every), global_batch_size
        self.last_step, self.last_seconds = 0, 0.0
        self.first_step, self.first_seconds = 0, 0.0
        self.seconds, self.steps = 0.0, 0

    def before_run(self, trainer) -> None:
        self.last_step = self.first_step = trainer.step
        self.last_seconds = self.first_seconds = trainer.step_seconds
        self.run_logger.log_metrics(parameter_counts(trainer.method), trainer.step, prefix="train/")

    def after_step(self, trainer, losses) -> None:
        self.steps, self.seconds = trainer.step - self.first_step, trainer.step_seconds - self.first_seconds
        if trainer.step % self.every and trainer.step != trainer.max_steps:
            return
        steps, seconds = trainer.step - self.last_step, trainer.step_seconds - self.last_seconds
        record = {**losses, "lr": trainer.optimizer.param_groups[0]["lr"], **self._rates(steps, seconds),
                  "peak_mem_mib": peak_memory_mib(trainer.device)}
        self.run_logger.log_metrics(record, trainer.step, prefix="train/")
        self.last_step, self.last_seconds = trainer.step, trainer.step_seconds

    def _rates(self, steps: int, seconds: float) -> dict[str, float]:
        seconds = max(seconds, 1e-9)
        return {"samples_per_s": steps * self.global_batch_size / seconds, "step_time_s": seconds / max(steps, 1)}

    def cost(self) -> dict[str, float]:
        """``samples_per_s`` and ``step_time_s`` over the steps this process ran (none: empty)."""
        return self._rates(self.steps, self.seconds) if self.steps else {}


class EMAHook(Hook):
    """An exponential moving average of ``params`` (see :class:`ParameterEMA`), updated after
    every optimizer step, swapped in for evaluation, saved as the checkpoint's ``ema``."""

    state_key = "ema"

    def __init__(self, params: dict[str, torch.nn.Parameter], *, decay: float, warmup: bool = False):
        self.ema = ParameterEMA(params, decay, warmup)

    def after_step(self, trainer, losses) -> None:
        self.ema.update()

    def swapped_in(self):
        """A context in which the parameters hold the averages (the raw weights come back after)."""
        return self.ema.swapped_in()

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


class EvaluationHook(Hook):
    """Evaluate every ``every`` steps (if set) and at the end (``at_end``), with the EMA weights
    when an ``ema`` hook is given. ``make_loader()`` gives a fresh evaluation loader each time.
    The metrics go to the run logger (prefix ``val/``) and to ``trainer.metrics`` (plus ``step``)."""

    def __init__(
        self, *, make_loader: Callable[[], Iterable], evaluator, run_logger, every: int | None = None,
        at_end: bool = True, ema: EMAHook | None = None, num_overlays: int = 0,
    ):
        self.make_loader, self.evaluator, self.run_logger = make_loader, evaluator, run_logger
        self.every, self.at_end, self.ema, self.num_overlays = every, at_end, ema, num_overlays

    def after_step(self, trainer, losses) -> None:
        if self.every and trainer.step % self.every == 0 and trainer.step != trainer.max_steps:
            self.evaluate(trainer)

    def after_run(self, trainer) -> None:
        if self.at_end:
            self.evaluate(trainer)

    def evaluate(self, trainer) -> dict:
        context = self.ema.swapped_in() if self.ema else contextlib.nullcontext()
        with context:
            metrics, overlays = evaluate(
                trainer.method, self.make_loader(), self.evaluator, device=trainer.device,
                precision=trainer.precision, num_overlays=self.num_overlays,
            )
        trainer.metrics = {**metrics, "step": trainer.step}
        self.run_logger.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, dict)}, trainer.step, prefix="val/")
        if overlays:
            self.run_logger.log_overlays(overlays, trainer.step)
        log.info("step %d: %s", trainer.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        return metrics


class CheckpointHook(Hook):
    """Save ``<run_dir>/checkpoints/last.pt`` every ``every`` steps (if set), when the run is
    stopping for a preemption signal (``trainer.stop_signal``) and at the end (rank 0, atomic write); at the start remove temporaries of killed runs, warn when the disk
    is too small, and resume: ``auto`` continues from ``last.pt`` when it exists, a path
    resumes from that file, None starts fresh.

    The file: ``step``, ``trainable`` (name -> tensor), ``optimizer``, ``scheduler``, ``scaler``,
    ``ema`` (None without an EMA hook), ``rng``, ``meta``, plus the state of every other hook
    with a ``state_key``. Only trainable parameters are stored, never the frozen backbone.
    """

    restores_state = True

    def __init__(self, *, run_dir: Path, every: int | None = None, resume: str | None = "auto"):
        self.run_dir, self.every, self.resume = Path(run_dir), every, resume

    @property
    def path(self) -> Path:
        return self.run_dir / "checkpoints" / LAST

    def before_run(self, trainer) -> None:
        self._stateful(trainer)  # refuse clashing keys before any work
        if dist.is_main():
            remove_stale_temporaries(self.run_dir / "checkpoints", self.run_dir)
            self.check_free_space(trainer)
        self.load(trainer)

    def after_step(self, trainer, losses) -> None:
        if (self.every and trainer.step % self.every == 0) or getattr(trainer, "stop_signal", 0):
            self.save(trainer)

    def after_run(self, trainer) -> None:
        self.save(trainer)

    @staticmethod
    def _stateful(trainer) -> list[Hook]:
        hooks = [h for h in trainer.hooks if getattr(h, "state_key", None)]
        keys = [h.state_key for h in hooks]
        clashes = sorted({k for k in keys if keys.count(k) > 1 or (k in CHECKPOINT_KEYS and k != "ema")})
        if clashes:
            raise ConfigError(f"hooks store their state under checkpoint keys {clashes} that are taken "
                              f"(reserved: {', '.join(CHECKPOINT_KEYS)}; one hook per key)")
        return hooks

    def state(self, trainer) -> dict:
        """The checkpoint contents (plain containers and tensors: loads with ``weights_only``)."""
        state = {
            "step": trainer.step,
            "trainable": {n: p.detach().cpu().clone() for n, p in trainer.params.items()},
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "ema": None,
            "rng": rng_state(),
            "meta": {"method": type(trainer.method).__name__, "world_size": dist.world_size(),
                     "peft": getattr(trainer.method, "peft_settings", None)},  # method.peft (sambench/peft)
        }
        for hook in self._stateful(trainer):
            state[hook.state_key] = hook.state_dict()
        return state

    def save(self, trainer) -> None:
        if trainer.params and dist.is_main():
            save_atomic(self.state(trainer), self.path)
        dist.barrier(f"the checkpoint of step {trainer.step} (rank 0 writes it)")

    def load(self, trainer) -> None:
        """Resume ``trainer`` (and the stateful hooks) from the configured checkpoint, if any."""
        path = None
        if self.resume == "auto":
            path = self.path if self.path.is_file() else None
        elif self.resume:
            path = Path(self.resume)
        if path is None or not trainer.params:
            return
        state = load_checkpoint(path)
        saved, current = state.get("meta", {}).get("peft"), getattr(trainer.method, "peft_settings", None)
        if saved != current:
            raise CheckpointError(f"cannot resume from {path}: it was trained with method.peft={saved}, this run has "
                                  f"{current} (resume with the same method.peft, or start a new run folder)")
        load_trainable(trainer.params, state["trainable"], path)
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.scaler.load_state_dict(state["scaler"])
        for hook in self._stateful(trainer):
            if state.get(hook.state_key):
                hook.load_state_dict(state[hook.state_key])
        set_rng_state(state["rng"])
        trainer.step = int(state["step"])
        log.info("resumed from %s at step %d", path, trainer.step)

    def check_free_space(self, trainer) -> None:
        """Warn at the start, not after the work, when the run folder cannot hold a checkpoint."""
        if not trainer.params:
            return
        moments = 2 if isinstance(trainer.optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1
        weights = sum(p.numel() * p.element_size() for p in trainer.params.values())
        hooks = sum(tensor_bytes(h.state_dict()) for h in self._stateful(trainer))  # e.g. the EMA's averages
        needed = (1 + moments) * weights + hooks
        folder = self.run_dir if self.run_dir.exists() else self.run_dir.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if free < 2 * needed:  # the new file is written beside the previous one
            log.warning("only %s free in %s; each checkpoint needs about %s (written beside the previous one)",
                        megabytes(free), folder, megabytes(needed))
