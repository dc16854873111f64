"""Atomic file writes: a temporary file in the same folder, then a rename, so readers never see
a half-written file and a failure leaves nothing behind (the previous file stays).

A write that fails for lack of space or permission raises :class:`OutputError` naming the file,
the bytes it needed and the space left. Temporaries of a killed process (``.<name>.<pid>…tmp``)
are removed by :func:`remove_stale_temporaries` when a run starts in the same folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from sambench.errors import OutputError
from sambench.logging.jsonl import to_json_safe

log = logging.getLogger(__name__)
_TEMPORARY = re.compile(r"^\..+\.(\d+)(\.[0-9a-f]{32})?\.tmp$")


def megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def write_failure(path: Path, needed: int, exc: BaseException, kept: bool | None = None) -> OutputError:
    """The error for a failed write of ``needed`` bytes to ``path``."""
    try:
        free = megabytes(shutil.disk_usage(path.parent).free) + " free"
    except OSError:
        free = "free space unknown"
    text = str(exc).strip()
    reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
    previous = "" if kept is None else ("; the previous file is kept" if kept else "; nothing was written")
    return OutputError(f"cannot write {path}: {reason} (needs about {megabytes(needed)}, {free} on that disk){previous}")


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = text.encode("utf-8")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise write_failure(path, len(data), exc, kept=path.exists()) from None
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
    except OSError as exc:
        raise write_failure(path, array.nbytes, exc, kept=path.exists()) from None
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(*folders: Path) -> int:
    """Delete atomic-write temporaries left in ``folders`` by processes that no longer run (a
    SIGKILL during a checkpoint write leaves up to a whole checkpoint); returns how many."""
    removed, size = 0, 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for file in folder.iterdir():
            match = _TEMPORARY.match(file.name)
            if match and file.is_file() and not _alive(int(match.group(1))):
                size += file.stat().st_size
                file.unlink(missing_ok=True)
                removed += 1
    if removed:
        log.info("removed %d temporary file%s (%s) left by an interrupted run", removed, "s" * (removed > 1), megabytes(size))
    return removed
