"""Weights of one Open-Vocabulary SAM stage: a sambench run (``checkpoints/last.pt`` or the run
folder; the trainable tensors, or their EMA when the run kept one) or an official released file
(``methods/ovsam/official_checkpoint.py``), told apart by their content."""

from __future__ import annotations

from pathlib import Path

import torch

from sambench.checkpoint import resolve_checkpoint
from sambench.errors import CheckpointError
from sambench.weights_file import load_weights_file


def read_stage_file(path: str, option: str) -> tuple[str, dict[str, torch.Tensor], dict | None]:
    """(``"sambench"`` | ``"official"``, tensors by name, the ``method.peft`` settings a sambench
    run was trained with or None) of a stage's weights; ``option`` names the config key in errors."""
    file = resolve_checkpoint(path, Path("."))
    content = load_weights_file(file, f"{option}: a sambench run (folder or checkpoint) or the authors' released file")
    if isinstance(content, dict) and "trainable" in content:
        ema = content.get("ema")
        peft = (content.get("meta") or {}).get("peft")
        return "sambench", dict(ema["shadow"] if ema else content["trainable"]), peft
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{option}: {file} is neither a sambench checkpoint nor a state dict of tensors")
    return "official", {k.removeprefix("module."): v for k, v in content.items()}, None


def with_prefix(tensors: dict[str, torch.Tensor], prefix: str, option: str, source: str) -> dict[str, torch.Tensor]:
    """The tensors named ``prefix…`` with the prefix removed (at least one)."""
    picked = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    if not picked:
        raise CheckpointError(f"{option}: {source} holds no '{prefix}*' tensors (is it a run of the right stage?)")
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
