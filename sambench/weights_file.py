"""Read a local weights file safely: ``torch.load(weights_only=True)`` with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sambench.errors import CheckpointError


def load_weights_file(path: Path, expected: str) -> Any:
    """The file's content (tensors and plain containers only).

    Raises CheckpointError naming ``path`` and ``expected`` for a missing or empty file and for
    anything ``weights_only`` refuses (garbage bytes, pickled objects, truncated archives).
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (expected {expected})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path} (expected {expected})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint is not a weights file: {path} (expected {expected}; torch.load said: {reason[:200]})"
        ) from None
