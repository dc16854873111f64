"""Append-only JSON Lines log: one record per line, flushed at once, readable while a run goes.

Values are converted to plain JSON before writing:
- numpy and torch scalars, and arrays/tensors with one element, become Python numbers;
- larger arrays/tensors become nested lists; tuples become lists; ``Path`` becomes a string;
- NaN and +-inf become ``null`` (strict JSON, so ``jq``/``json.loads`` everywhere accept the file);
- anything else unknown is written as its ``str()`` rather than failing the run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any


def to_plain(value: Any) -> Any:
    """``value`` with numpy/torch numbers and arrays turned into Python numbers and lists."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):  # also numpy.float64, a float subclass
        return float(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "detach"):  # torch.Tensor, possibly on a GPU
        value = value.detach().cpu()
    if hasattr(value, "tolist") and hasattr(value, "item"):  # numpy array/scalar, torch tensor
        size = value.numel() if hasattr(value, "numel") else value.size
        return to_plain(value.item() if size == 1 else value.tolist())
    return str(value)


def to_json_safe(value: Any) -> Any:
    """:func:`to_plain`, then NaN and infinities replaced by ``None``."""
    return _nonfinite_to_none(to_plain(value))


def _nonfinite_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _nonfinite_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nonfinite_to_none(item) for item in value]
    return value


class JsonlWriter:
    """Appends records to ``path`` (created with its folder; an existing file is continued)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self.failed = False

    def write(self, record: dict) -> None:
        """Append ``record`` as one JSON line and flush it to the OS."""
        if self._file.closed:
            raise ValueError(f"JsonlWriter for {self.path} is closed")
        line = json.dumps(to_json_safe(record), allow_nan=False, ensure_ascii=False)
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as exc:  # disk full: the log is not a result; checkpoints and metrics.json fail loudly
            if not self.failed:
                logging.getLogger(__name__).warning("cannot append to %s (%s): later log records are lost",
                                                    self.path, exc.strerror or exc)
            self.failed = True

    def close(self) -> None:
        """Close the file; calling it again does nothing."""
        try:
            self._file.close()
        except OSError:  # the last flush failed (disk full): already reported by write()
            pass
