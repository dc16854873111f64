"""Weights of one Open-Vocabulary SAM stage from a sambench run (``checkpoints/last.pt`` or the
run folder): the trainable tensors, or their EMA when the run kept one."""

from __future__ import annotations

from pathlib import Path

import torch

from sambench.engine.checkpoint import load_checkpoint, resolve_checkpoint
from sambench.errors import CheckpointError


def stage_tensors(path: str, prefix: str, option: str) -> dict[str, torch.Tensor]:
    """Tensors named ``prefix…`` of the checkpoint at ``path`` (a file or a run folder), with the
    prefix removed; EMA weights when present. ``option`` names the config key in errors."""
    file = resolve_checkpoint(path, Path("."))
    if not file.is_file():
        raise CheckpointError(f"{option}: file not found: {file} (a sambench checkpoint or run folder)")
    state = load_checkpoint(file)
    ema = state.get("ema")
    weights = ema["shadow"] if ema else state["trainable"]
    picked = {name[len(prefix):]: t for name, t in weights.items() if name.startswith(prefix)}
    if not picked:
        raise CheckpointError(f"{option}: {file} holds no '{prefix}*' tensors (is it a run of the right stage?)")
    return picked


def load_exactly(module: torch.nn.Module, tensors: dict[str, torch.Tensor], option: str, source: str,
                 allowed_missing: tuple[str, ...] = ()) -> None:
    """``module.load_state_dict`` that fails with the missing/unexpected names (except the
    ``allowed_missing`` ones, e.g. buffers copied from SAM) and with shape mismatches."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in tensors and k not in allowed_missing)
    unexpected = sorted(k for k in tensors if k not in own)
    shapes = [f"{k}: {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in tensors
              if k in own and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{option}: {source} does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                              f"shape mismatches {shapes[:3]} ({len(missing)} / {len(unexpected)} / {len(shapes)})")
    module.load_state_dict(tensors, strict=False)
