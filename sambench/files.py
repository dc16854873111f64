"""Atomic file writes: a temporary file in the same folder, then a rename, so readers never see
a half-written file and a failure leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sambench.logging.jsonl import to_json_safe


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    """Strict JSON (NaN/inf written as null); ``indent=None`` writes it compactly."""
    separators = (",", ":") if indent is None else None
    write_text_atomic(path, json.dumps(to_json_safe(data), indent=indent, separators=separators) + "\n")


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` (parent folders created) via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
