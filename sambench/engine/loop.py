"""The training loop. Methods compute losses; this runs the steps around them and nothing else.

Everything it uses arrives built (the composition root, ``sambench/cli/build_training.py``,
makes the loader, optimizer, scheduler, DDP wrapper and hooks); evaluation, checkpoints, EMA
and logging are hooks (``sambench/engine/hooks.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from sambench import dist
from sambench.engine.cost import model_cost
from sambench.engine.precision import autocast, check_precision
from sambench.engine.preemption import Preempted
from sambench.logging.console import progress

log = logging.getLogger(__name__)


class Trainer:
    """Runs ``max_steps`` optimizer steps of ``model`` (forward -> loss dict, backward under
    AMP, ``accumulate`` batches per step, gradient clipping, optimizer and scheduler step) and
    calls the ``hooks`` around them.

    ``model``: the method, or the method wrapped in ``DistributedDataParallel``; called on a
    batch it returns ``{name: scalar loss}``. ``train_batches(epoch=, skip_batches=)``: an
    iterator over that epoch's batches without its first ``skip_batches`` (the same shuffle
    whether an epoch starts fresh or at a resume). ``steps_per_epoch``: optimizer steps per
    epoch. ``precision``: fp32 | bf16 | fp16 (fp16 with a grad scaler). ``hooks`` are called in
    list order, except that ``before_run`` goes first to hooks that restore state
    (:mod:`sambench.engine.hooks`).

    Run state the hooks read and write: ``step`` (optimizer steps done), ``metrics`` (the last
    evaluation's), ``params`` (the method's trainable parameters by name), ``scaler``,
    ``stop_signal`` (set by the preemption hook: after this step's hooks, including the
    checkpoint's save, the run stops with :class:`~sambench.engine.preemption.Preempted`),
    ``step_seconds`` (wall time of the optimizer steps this process ran, for :meth:`cost`).
    """

    def __init__(
        self, *, model: torch.nn.Module, train_batches: Callable[..., Iterator] | None,
        optimizer: torch.optim.Optimizer, scheduler, max_steps: int, steps_per_epoch: int,
        device: torch.device, precision: str = "fp32", accumulate: int = 1, grad_clip: float | None = None,
        hooks: Sequence = (),
    ):
        check_precision(precision)
        self.model, self.train_batches, self.optimizer, self.scheduler = model, train_batches, optimizer, scheduler
        self.method = model.module if isinstance(model, DistributedDataParallel) else model
        self.params = self.method.trainable_parameters()
        self.max_steps, self.steps_per_epoch, self.device, self.precision = max_steps, steps_per_epoch, device, precision
        self.accumulate, self.grad_clip, self.hooks = max(1, accumulate), grad_clip, list(hooks)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.step, self.metrics, self.stop_signal = 0, {}, 0
        self.step_seconds = 0.0  # wall time of the steps this process ran (data loading included, hooks not)

    def cost(self) -> dict[str, float]:
        """The run's cost as flat numbers (``cost.json``, :data:`~sambench.engine.cost.COST_KEYS`):
        parameter counts, peak memory, and the step time and samples/s the hooks measured."""
        cost = model_cost(self.method, self.device)
        for hook in self.hooks:
            cost.update(hook.cost() if hasattr(hook, "cost") else {})
        return cost

    def fit(self) -> dict:
        """Train from ``step`` (a checkpoint hook may resume it first) to ``max_steps``; return
        ``metrics`` (what the evaluation hook last put there)."""
        for hook in sorted(self.hooks, key=lambda h: not h.restores_state):  # a resume first
            hook.before_run(self)
        if self.max_steps == 0:
            log.info("nothing to train (no trainable parameters or max_steps=0): evaluating only")
        bar = progress(total=self.max_steps, desc="train", rank=dist.rank())
        bar.update(self.step)
        while self.step < self.max_steps:
            epoch, done = divmod(self.step, self.steps_per_epoch)
            batches = self.train_batches(epoch=epoch, skip_batches=done * self.accumulate)
            for _ in range(self.steps_per_epoch - done):
                if self.step >= self.max_steps:
                    break
                started = time.perf_counter()
                with dist.waiting(f"step {self.step + 1} (DDP all-reduces gradients in backward)"):
                    losses = self._optimizer_step([next(batches) for _ in range(self.accumulate)])
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.step_seconds += time.perf_counter() - started
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{sum(v for k, v in losses.items() if k != 'grad_norm'):.4f}")
                for hook in self.hooks:
                    hook.after_step(self, losses)
                if self.stop_signal:
                    bar.close()
                    raise Preempted(self.stop_signal, self.step)
        bar.close()
        for hook in self.hooks:
            hook.after_run(self)
        return self.metrics

    def _optimizer_step(self, group) -> dict[str, float]:
        self.model.train()
        totals: dict[str, float] = {}
        for i, batch in enumerate(group):
            sync = i == len(group) - 1 or not isinstance(self.model, DistributedDataParallel)
            context = contextlib.nullcontext() if sync else self.model.no_sync()
            with context:
                with autocast(self.device, self.precision):
                    losses = self.model(batch)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {({k: float(v) for k, v in losses.items()})}")
                self.scaler.scale(loss / len(group)).backward()
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + float(value.detach()) / len(group)
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return totals
