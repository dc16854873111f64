"""The method contract: one ``nn.Module`` per method; the engine owns everything else."""

from __future__ import annotations

import torch
from torch import nn

from sambench.errors import ConfigError
from sambench.structures import Batch, Prediction
from sambench.tasks import Task

#: What a method may ask the composition root for (``ROOT_KWARGS``).
ROOT_KWARG_NAMES = ("class_names", "run_dir", "cache_dir", "task")


class SambenchMethod(nn.Module):
    """Base class of every registered method.

    Subclasses set ``TASK`` (a :class:`~sambench.tasks.Task`), ``REQUIRES`` when they need
    more of the backbone than the common interface, and implement ``training_step`` (methods
    that train) and ``predict``. The engine calls ``forward`` (= ``training_step``) so DDP sees
    it, and owns backward, AMP, clipping, EMA, checkpoints and logging.

    ``ROOT_KWARGS`` names the constructor keywords that the composition root fills besides the
    method's config keys, from :data:`ROOT_KWARG_NAMES`: ``class_names`` (the dataset's
    vocabulary, e.g. SSPrompt's semantic prompts), ``run_dir`` (the run folder, e.g. PerSAM-F's
    fitted weights), ``cache_dir`` (frozen-feature caches; None when caching is off) and
    ``task`` (for a method with several ``TASKS``: the one the dataset serves; the method sets
    ``self.TASK`` to it).

    ``BACKBONE_KIND`` is the kind of backbone the method runs on: ``promptable`` (the
    :class:`~sambench.backbones.interface.SegmentationBackbone` contract: SAM, SAM 2, HQ-SAM) or
    ``concept`` (SAM 3's concept model, method=sam3); the composition root refuses other pairings.
    """

    TASK: Task
    #: several tasks, in order of preference (the root picks the first the dataset serves); else ``(TASK,)``
    TASKS: tuple[Task, ...] = ()
    BACKBONE_KIND: str = "promptable"
    #: backbone capabilities this method needs (:mod:`sambench.backbones.interface`), checked at compose time
    REQUIRES: frozenset[str] = frozenset()
    ROOT_KWARGS: tuple[str, ...] = ()

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named scalar loss terms; the engine back-propagates their sum."""
        raise NotImplementedError(f"{type(self).__name__} has no training step (training-free method)")

    def predict(self, batch: Batch) -> list[Prediction]:
        raise NotImplementedError

    # Optional: ``adapt(sample)`` for test-time fitting to a sample's references (PerSAM-F);
    # methods that have it call it from ``predict`` once per concept.

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.training_step(batch)

    def training_hooks(self) -> list:
        """Hooks this method adds to its training (:class:`sambench.engine.hooks.Hook`
        instances: e.g. a schedule of its own, a periodic re-sampling); they run after the
        built-in EMA / logging / evaluation hooks and before ``trainer.hooks`` and the checkpoint
        hook, which stores each one's state under its ``state_key``. None by default."""
        return []

    def official_files(self, *, name: str, backbone: str, dataset: str, ddp_prefix: bool = False) -> dict[str, dict]:
        """The model in its authors' checkpoint layout(s) (``tools/export_official.py``): file name
        -> state dict. ``name`` is the method's config name, ``backbone`` the SAM variant without
        underscores (``vith``), ``dataset`` the dataset's config name, ``ddp_prefix`` adds
        ``module.`` where the official loader expects it. Methods without an official layout keep
        this refusal."""
        raise ConfigError(f"method '{name}' has no official checkpoint layout; exportable: sam2clip, clip2sam, "
                          "ovsam, dit_layerwise, dit_e2e")

    #: the ``method.peft`` settings applied to this model (set by :func:`sambench.peft.apply_peft`;
    #: checkpoints record them so evaluation rebuilds the same adapters)
    peft_settings: dict | None = None

    def peft_parts(self) -> dict[str, str]:
        """Parts of this method besides its backbone's, for ``method.peft.train`` / ``freeze``:
        name -> regex over full parameter names (DIT: ``text_encoder``)."""
        return {}

    def peft_targets(self) -> dict[str, str]:
        """Adapter targets of this method besides its backbone's: name -> regex over full
        ``nn.Linear`` module names (DIT: ``text_attention``)."""
        return {}

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters the optimizer updates (and checkpoints store), by name."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}
