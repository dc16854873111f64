"""Read a local weights file safely: ``torch.load(weights_only=True)`` with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from sambench.errors import CheckpointError


def check_weights_file(path: Path, expected: str) -> None:
    """Raise CheckpointError naming ``path`` and ``expected`` when the file is missing or empty
    (cheap: callers may check before building a large model)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (expected {expected})")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path} (expected {expected})")


def load_weights_file(path: Path, expected: str) -> Any:
    """The file's content (tensors and plain containers only).

    Raises CheckpointError naming ``path`` and ``expected`` for a missing or empty file and for
    anything ``weights_only`` refuses (garbage bytes, pickled objects, truncated archives).
    """
    check_weights_file(path, expected)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint is not a weights file: {path} (expected {expected}; torch.load said: {reason[:200]})"
        ) from None


def load_model_state(model: torch.nn.Module, checkpoint: str | Path, *, model_name: str, expected: str,
                     hint: Callable[[dict], str] = lambda state: "",
                     select: Callable[[dict], dict] | None = None) -> None:
    """Load a local state dict into ``model``, strictly, with one-line errors naming the file.

    The file holds a state dict, or the official layout with it under ``"model"``. Errors: what
    :func:`load_weights_file` raises, "holds no state dict of tensors", and "does not fit
    <model_name>" with the counts and first missing / unexpected / other-shape keys plus
    ``hint(state)`` (which model the file looks like; '' when unsure). ``select`` picks the
    model's tensors from a file that holds more (SAM 3: the ``detector.`` keys).
    """
    path = Path(checkpoint).expanduser()
    state = load_weights_file(path, expected)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if select is not None and isinstance(state, dict):
        state = select(state)
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint holds no state dict of tensors: {path} (expected {expected})")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint does not fit {model_name}: {path} (expected {expected}){hint(state)}; "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:2]}), {len(wrong)} with other shapes (e.g. {wrong[:2]})")
    model.load_state_dict(state)
