"""Activation checkpointing of image-encoder blocks (``trainer.activation_checkpointing``).

A checkpointed block keeps only its input for backward and runs again during backward to
recompute what it dropped (``torch.utils.checkpoint``, non-reentrant, RNG state restored so
dropout repeats). Peak memory of a trained encoder falls from every block's activations to one
block's, for about one more encoder forward per step.

A ``block_fn`` run under checkpointing is called a second time, during backward, with the same
``(index, block, x)``; whatever else it reads must still hold the values of the first call (state
carried from block ``i-1`` to block ``i`` is kept per index, never overwritten by later blocks).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sambench.backbones.interface import BlockFn


def checkpointed(block_fn: BlockFn | None) -> BlockFn:
    """A block_fn that runs ``block_fn(index, block, x)`` (None: ``block(x)``) under activation
    checkpointing while grad is enabled, and plainly otherwise (evaluation, ``no_grad``)."""

    def run(index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if block_fn is None:
            def call(x):
                return block(x)
        else:
            def call(x):
                return block_fn(index, block, x)
        if not torch.is_grad_enabled():
            return call(x)
        return checkpoint(call, x, use_reentrant=False)

    return run


def active(enabled: bool) -> bool:
    """Whether an encoder set to ``enabled`` checkpoints now: only while grad is enabled."""
    return bool(enabled) and torch.is_grad_enabled()
