"""The training half of the composition root: the ``trainer`` config section -> training
loader, optimizer, LR scheduler, DDP wrapper, hooks and the :class:`Trainer` that runs them.

Each group of the section is the keyword arguments of one factory here (``trainer.optim`` ->
:func:`build_optimizer`, ``trainer.schedule`` -> :func:`build_scheduler` and
:func:`~sambench.engine.schedules.lr_multiplier`, ``trainer.eval`` ->
:func:`build_evaluation_hook`, ``trainer.checkpoint`` -> :class:`CheckpointHook`,
``trainer.ema`` -> :func:`build_ema_hook`, ``trainer.preemption`` -> :class:`PreemptionHook`,
the top-level keys -> :func:`build_trainer`, ``trainer.activation_checkpointing`` ->
:func:`enable_activation_checkpointing`). A
factory's keyword parameters with defaults are its config keys: ``check_trainer`` checks the
config against those signatures before anything is built.

Factories rather than Hydra ``_target_`` / ``_partial_`` nodes: switching
``trainer.optim.name=sgd`` keeps working from one key (SGD takes no ``betas``), every key keeps
a type and a range check with a one-line error, and config files stay free of class paths.
Extra hooks are the one place for ``_target_``: ``trainer.hooks`` lists classes to add.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from torch.nn.parallel import DistributedDataParallel

from sambench.backbones.interface import SegmentationBackbone
from sambench.data.loader import eval_loader, start_epoch, train_loader
from sambench import dist
from sambench.engine.hooks import CheckpointHook, EMAHook, EvaluationHook, Hook, LossLoggingHook
from sambench.engine.loop import Trainer
from sambench.engine.preemption import PreemptionHook
from sambench.engine.schedules import epochs_to_steps, lr_multiplier
from sambench.errors import ConfigError

log = logging.getLogger(__name__)
OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def build_optimizer(
    params: list[torch.nn.Parameter], *, name: str = "adamw", lr: float = 1e-4, weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """``name``: adamw | adam (``betas``, ``eps``) | sgd (``momentum``). With no parameters
    (nothing to train) a stand-in keeps the scheduler and the checkpoint format valid."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown trainer.optim.name '{name}'; valid: {', '.join(OPTIMIZERS)}")
    params = list(params) or [torch.nn.Parameter(torch.zeros(1))]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return OPTIMIZERS[name](params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, steps_per_epoch: int,
    warmup_epochs: float | None = None, milestone_epochs: list[float] | None = None, **schedule,
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR = base LR x :func:`lr_multiplier` (``schedule``: its keyword arguments) at each
    optimizer step; ``warmup_epochs`` / ``milestone_epochs`` are converted to steps."""
    steps = epochs_to_steps({**schedule, "warmup_epochs": warmup_epochs, "milestone_epochs": milestone_epochs},
                            steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, total_steps=max(1, total_steps), **steps))


def build_ema_hook(params: dict[str, torch.nn.Parameter], *, decay: float | None = None,
                   warmup: bool = False) -> EMAHook | None:
    """``decay`` (e.g. 0.9997) keeps an EMA of the trainable weights; None: no EMA."""
    return EMAHook(params, decay=decay, warmup=warmup) if decay and params else None


def build_evaluation_hook(
    eval_set, *, evaluator, run_logger, num_workers: int, ema: EMAHook | None, every: int | None = None,
    at_end: bool = True, batch_size: int = 2,
) -> EvaluationHook:
    """Evaluate every ``every`` steps and/or at the end, ``batch_size`` samples per rank."""
    return EvaluationHook(
        make_loader=functools.partial(eval_loader, eval_set, batch_size=batch_size, num_workers=num_workers),
        evaluator=evaluator, run_logger=run_logger, every=every, at_end=at_end, ema=ema,
        num_overlays=getattr(run_logger, "num_overlays", 0),
    )


def extra_hooks(hooks: list) -> list[Hook]:
    """Hooks given by code (instances) or by config (``{_target_: module.Class, ...}``)."""
    built = [h if isinstance(h, Hook) else _instantiate(h) for h in hooks]
    wrong = [type(h).__name__ for h in built if not isinstance(h, Hook)]
    if wrong:
        raise ConfigError(f"trainer.hooks: {', '.join(wrong)} is not a sambench.engine.hooks.Hook")
    return built


def _instantiate(spec):
    try:
        return instantiate(spec)
    except Exception as exc:  # Hydra wraps import and constructor errors alike
        raise ConfigError(f"trainer.hooks: cannot build {spec}: {str(exc).splitlines()[0]}") from None


def enable_activation_checkpointing(method: torch.nn.Module) -> list[SegmentationBackbone]:
    """Checkpoint the encoder blocks of every backbone in ``method`` whose image encoder trains
    (a parameter with ``requires_grad``, LoRA tensors included) and return those backbones; a
    backbone without the feature fails with a ConfigError. With no such encoder it only logs
    that the option has no effect (frozen encoders keep no activations for backward anyway)."""
    backbones = [m for m in method.modules() if isinstance(m, SegmentationBackbone)]
    training = [b for b in backbones if b.image_encoder_trains()]
    if not training:
        log.info("trainer.activation_checkpointing=true has no effect: %s has no backbone whose image encoder "
                 "trains", type(method).__name__)
        return []
    for backbone in training:
        backbone.set_activation_checkpointing(True)
        log.info("activation checkpointing of the image encoder blocks of %s (%s)",
                 getattr(backbone, "name", type(backbone).__name__), type(backbone).__name__)
    return training


def build_trainer(
    *, method, train_set, eval_set, evaluator, run_dir: Path, device: torch.device, run_logger,
    max_steps: int | None = None, max_epochs: int | None = 1, batch_size: int = 2, num_workers: int = 0,
    precision: str = "fp32", accumulate: int = 1, grad_clip: float | None = None, seed: int = 0,
    find_unused_parameters: bool = False, optim: dict | None = None, schedule: dict | None = None,
    eval: dict | None = None, checkpoint: dict | None = None, ema: dict | None = None,
    preemption: dict | None = None, hooks: list | None = None, activation_checkpointing: bool = False,
) -> Trainer:
    """The trainer for ``method`` on ``train_set``, evaluated on ``eval_set`` (None: never).

    Steps count optimizer updates; with ``accumulate`` > 1 each uses that many batches of
    ``batch_size`` samples per rank. ``max_steps`` wins over ``max_epochs``. Hooks, in order:
    EMA (if ``ema.decay``), loss logging, evaluation, the method's ``training_hooks()``,
    ``hooks`` (extra: by code or ``trainer.hooks``), preemption (``preemption.signals``), checkpoint.
    ``activation_checkpointing``: see :func:`enable_activation_checkpointing`.
    """
    method = method.to(device)
    if activation_checkpointing:
        enable_activation_checkpointing(method)
    params = method.trainable_parameters()
    accumulate = max(1, accumulate)
    loader = train_loader(train_set, batch_size=batch_size, seed=seed, num_workers=num_workers) if params else None
    batches = len(loader) if loader else 0
    if params and batches < accumulate:
        raise ConfigError(
            f"training set too small: {len(train_set)} samples give {batches} batches of "
            f"{batch_size} per rank x {dist.world_size()} ranks; need at least trainer.accumulate={accumulate}"
        )
    steps_per_epoch = batches // accumulate
    total = int(max_steps) if max_steps is not None else int((max_epochs or 0) * steps_per_epoch)
    total = total if params else 0
    optimizer = build_optimizer(list(params.values()), **(optim or {}))
    scheduler = build_scheduler(optimizer, total_steps=total, steps_per_epoch=steps_per_epoch, **(schedule or {}))
    ema_hook = build_ema_hook(params, **(ema or {}))  # before DDP, as the averages start from this rank's weights
    model = method
    if dist.is_distributed() and params:
        ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(method, device_ids=ids, find_unused_parameters=find_unused_parameters)
    all_hooks: list[Hook] = [
        *([ema_hook] if ema_hook else []),
        LossLoggingHook(run_logger=run_logger, every=getattr(run_logger, "log_every", 10),
                        global_batch_size=batch_size * accumulate * dist.world_size()),
    ]
    if eval_set is not None:
        all_hooks.append(build_evaluation_hook(eval_set, evaluator=evaluator, run_logger=run_logger,
                                               num_workers=num_workers, ema=ema_hook, **(eval or {})))
    all_hooks += [*extra_hooks([*method.training_hooks(), *(hooks or [])]), PreemptionHook(**(preemption or {})),
                  CheckpointHook(run_dir=run_dir, **(checkpoint or {}))]
    return Trainer(
        model=model, train_batches=functools.partial(start_epoch, loader, seed=seed) if loader else None,
        optimizer=optimizer, scheduler=scheduler, max_steps=total, steps_per_epoch=steps_per_epoch, device=device,
        precision=precision, accumulate=accumulate, grad_clip=grad_clip, hooks=all_hooks,
    )
