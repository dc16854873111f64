"""The training loop. Methods compute losses; this owns everything around them."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from sambench.data.loader import eval_loader, start_epoch, train_loader
from sambench import dist
from sambench.checkpoint import LAST, load_checkpoint, rng_state, save_atomic, set_rng_state
from sambench.engine.ema import ParameterEMA
from sambench.engine.evaluate import evaluate
from sambench.engine.hooks import CheckpointHook, EvaluationHook, Hook, LossLoggingHook
from sambench.engine.precision import autocast, check_precision
from sambench.engine.schedules import lr_multiplier
from sambench.errors import CheckpointError, ConfigError
from sambench.files import megabytes, remove_stale_temporaries
from sambench.logging.console import progress

log = logging.getLogger(__name__)
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class Trainer:
    """Fits ``method`` on ``train_set`` for ``max_steps`` optimizer steps (or ``max_epochs``).

    Steps count optimizer updates; with ``accumulate`` > 1 each uses that many batches of
    ``batch_size`` samples per rank. Checkpoints hold trainable parameters only.
    """

    def __init__(
        self, *, method, train_set, eval_set, evaluator, run_dir: Path, device: torch.device, run_logger,
        max_steps: int | None = None, max_epochs: int | None = 1, batch_size: int = 2,
        eval_batch_size: int = 2, num_workers: int = 0, optimizer: str = "adamw", lr: float = 1e-4,
        weight_decay: float = 0.0, betas: tuple = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9,
        schedule: dict | None = None, grad_clip: float | None = None, ema_decay: float | None = None,
        ema_warmup: bool = False,
        precision: str = "fp32", accumulate: int = 1, eval_every: int | None = None,
        eval_at_end: bool = True, ckpt_every: int | None = None, resume: str | None = "auto",
        seed: int = 0, find_unused_parameters: bool = False, hooks: list[Hook] | None = None,
    ):
        check_precision(precision)
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown trainer.optimizer '{optimizer}'; valid: {', '.join(OPTIMIZERS)}")
        self.method, self.evaluator, self.device = method.to(device), evaluator, device
        self.run_dir, self.run_logger, self.precision = Path(run_dir), run_logger, precision
        self.accumulate, self.grad_clip, self.eval_batch_size = max(1, accumulate), grad_clip, eval_batch_size
        self.num_workers, self.seed, self.resume = num_workers, seed, resume
        self.global_batch_size = batch_size * self.accumulate * dist.world_size()
        self.params = method.trainable_parameters()
        self.train_loader = train_loader(train_set, batch_size=batch_size, seed=seed, num_workers=num_workers) if self.params else None
        self.eval_set = eval_set
        batches = len(self.train_loader) if self.train_loader else 0
        if self.params and batches < self.accumulate:
            raise ConfigError(
                f"training set too small: {len(train_set)} samples give {batches} batches of "
                f"{batch_size} per rank x {dist.world_size()} ranks; need at least trainer.accumulate={self.accumulate}"
            )
        self.steps_per_epoch = batches // self.accumulate
        self.max_steps = int(max_steps) if max_steps is not None else int((max_epochs or 0) * self.steps_per_epoch)
        if not self.params:
            self.max_steps = 0
        self.step, self.metrics = 0, {}
        self.optimizer = self._build_optimizer(optimizer, lr, weight_decay, betas, eps, momentum)
        sched = epochs_to_steps(dict(schedule or {}), self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_multiplier(s, total_steps=max(1, self.max_steps), **sched)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.ema = ParameterEMA(self.params, ema_decay, ema_warmup) if ema_decay and self.params else None
        self.model = method
        if dist.is_distributed() and self.params:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(method, device_ids=ids, find_unused_parameters=find_unused_parameters)
        self.hooks = hooks if hooks is not None else [
            LossLoggingHook(getattr(run_logger, "log_every", 10)),
            EvaluationHook(eval_every, eval_at_end),
            CheckpointHook(ckpt_every),
        ]

    def _build_optimizer(self, name, lr, weight_decay, betas, eps, momentum):
        params = list(self.params.values()) or [torch.nn.Parameter(torch.zeros(1))]
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return OPTIMIZERS[name](params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)

    # ----- the loop ---------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train (resuming when asked), evaluate at the end; return the last metrics."""
        if dist.is_main():
            remove_stale_temporaries(self.run_dir / "checkpoints", self.run_dir)
            self._check_free_space()
        self._maybe_resume()
        for hook in self.hooks:
            hook.before_run(self)
        if self.max_steps == 0:
            log.info("nothing to train (no trainable parameters or max_steps=0): evaluating only")
        bar = progress(total=self.max_steps, desc="train", rank=dist.rank())
        bar.update(self.step)
        while self.step < self.max_steps:
            epoch, done = divmod(self.step, self.steps_per_epoch)
            batches = start_epoch(self.train_loader, seed=self.seed, epoch=epoch, skip_batches=done * self.accumulate)
            for _ in range(self.steps_per_epoch - done):
                if self.step >= self.max_steps:
                    break
                with dist.waiting(f"step {self.step + 1} (DDP all-reduces gradients in backward)"):
                    losses = self._optimizer_step([next(batches) for _ in range(self.accumulate)])
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{sum(v for k, v in losses.items() if k != 'grad_norm'):.4f}")
                for hook in self.hooks:
                    hook.after_step(self, losses)
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
        if self.ema:
            self.ema.update()
        return totals

    # ----- evaluation and checkpoints ---------------------------------------------------------
    def run_evaluation(self) -> dict:
        loader = eval_loader(self.eval_set, batch_size=self.eval_batch_size, num_workers=self.num_workers)
        context = self.ema.swapped_in() if self.ema else contextlib.nullcontext()
        with context:
            metrics, overlays = evaluate(
                self.method, loader, self.evaluator, device=self.device, precision=self.precision,
                num_overlays=getattr(self.run_logger, "num_overlays", 0),
            )
        self.metrics = {**metrics, "step": self.step}
        self.run_logger.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, dict)}, self.step, prefix="val/")
        if overlays:
            self.run_logger.log_overlays(overlays, self.step)
        log.info("step %d: %s", self.step, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
        return metrics

    def checkpoint_state(self) -> dict:
        return {
            "step": self.step,
            "trainable": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": rng_state(),
            "meta": {"method": type(self.method).__name__, "world_size": dist.world_size()},
        }

    def _check_free_space(self) -> None:
        """Warn at the start, not after the work, when the run folder cannot hold a checkpoint."""
        if not self.params:
            return
        copies = 1 + (2 if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)) else 1) + bool(self.ema)
        needed = copies * sum(p.numel() * p.element_size() for p in self.params.values())  # weights, moments, EMA
        folder = self.run_dir if self.run_dir.exists() else self.run_dir.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if free < 2 * needed:  # the new file is written beside the previous one
            log.warning("only %s free in %s; each checkpoint needs about %s (written beside the previous one)",
                        megabytes(free), folder, megabytes(needed))

    def save_checkpoint(self) -> None:
        if self.params and dist.is_main():
            save_atomic(self.checkpoint_state(), self.run_dir / "checkpoints" / LAST)
        dist.barrier(f"the checkpoint of step {self.step} (rank 0 writes it)")

    def _maybe_resume(self) -> None:
        path = None
        if self.resume == "auto":
            candidate = self.run_dir / "checkpoints" / LAST
            path = candidate if candidate.is_file() else None
        elif self.resume:
            path = Path(self.resume)
        if path is None or not self.params:
            return
        state = load_checkpoint(path)
        load_trainable(self.params, state["trainable"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        log.info("resumed from %s at step %d", path, self.step)


def epochs_to_steps(schedule: dict, steps_per_epoch: int) -> dict:
    """Turn the epoch-based keys ``warmup_epochs`` / ``milestone_epochs`` into steps (papers
    state schedules in epochs; the scheduler steps once per optimizer update)."""
    warmup_epochs = schedule.pop("warmup_epochs", None)
    milestone_epochs = schedule.pop("milestone_epochs", None) or []
    if warmup_epochs is not None:
        schedule["warmup_steps"] = round(warmup_epochs * steps_per_epoch)
    if milestone_epochs:
        schedule["milestones"] = [*schedule.get("milestones", []), *(round(e * steps_per_epoch) for e in milestone_epochs)]
    return schedule


def load_trainable(params: dict[str, torch.nn.Parameter], saved: dict[str, torch.Tensor], path: Path) -> None:
    """Copy saved trainable tensors into ``params``; names and shapes must match exactly."""
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    wrong = sorted(n for n in set(params) & set(saved) if params[n].shape != saved[n].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit this method: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {wrong[:3]} (same method and options as when it was trained?)"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])

