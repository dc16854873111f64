"""Atomic training checkpoints made only of plain containers and tensors.

A checkpoint holds the trainable parameters (not the frozen backbone), optimizer, scheduler,
grad-scaler and EMA states, RNG states and the step, so it loads with
``torch.load(weights_only=True)``. Files are written to a temporary name in the same folder and
renamed into place: a crash never leaves a half-written ``last.pt``.
"""

from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import numpy as np
import torch

from sambench.errors import CheckpointError
from sambench.files import write_failure
from sambench.weights_file import load_weights_file

LAST = "last.pt"


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to ``path`` via a unique temporary file + ``os.replace``. A failed write
    (disk full, read-only folder) raises :class:`OutputError` naming the file and the space it
    needed; the previous ``path`` is left as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports failed writes as RuntimeError
        raise write_failure(path, tensor_bytes(obj), exc, kept=path.exists()) from None
    finally:
        tmp.unlink(missing_ok=True)


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a nested container (what a checkpoint of it needs on disk)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_checkpoint(path: Path) -> dict:
    """Load a sambench checkpoint (``weights_only``) with a clear error for bad files."""
    state = load_weights_file(path, "a sambench checkpoint written by tools/train.py, or a run folder")
    if not isinstance(state, dict) or "trainable" not in state:
        raise CheckpointError(f"checkpoint has no 'trainable' state: {path} (expected a file written by tools/train.py)")
    return state


def rng_state() -> dict:
    """Python, NumPy and torch RNG states as plain containers/tensors."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve_checkpoint(ckpt: str | None, run_dir: Path) -> Path | None:
    """A checkpoint file from ``ckpt`` (a file or a run folder) or None."""
    if not ckpt:
        return None
    path = Path(ckpt).expanduser()
    if path.is_dir():
        candidate = path / "checkpoints" / LAST
        if not candidate.is_file():
            raise CheckpointError(f"no checkpoint in run folder {path} (expected {candidate})")
        return candidate
    return path


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
