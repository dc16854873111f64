"""Mixed precision: ``fp32`` (TF32 off), ``bf16`` or ``fp16`` autocast."""

from __future__ import annotations

import contextlib

import torch

from sambench.errors import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown trainer.precision '{precision}'; valid: {', '.join(PRECISIONS)}")


def set_strict_fp32(precision: str) -> None:
    """Turn TF32 matmuls off for ``fp32`` so results compare across codebases to ~1e-5."""
    if precision == "fp32" and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def autocast(device: torch.device, precision: str):
    """An autocast context for ``precision`` on ``device`` (no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
