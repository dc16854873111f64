"""Console logging set up once per process, and a progress bar shown on rank 0 only."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

# Marks the handlers this module installs, so a second call replaces them instead of adding more.
_HANDLER_MARK = "_sambench_console"


class ConciseFormatter(logging.Formatter):
    """``[HH:MM:SS] message`` for INFO, ``[HH:MM:SS] LEVEL name: message`` for anything else."""

    def __init__(self, prefix: str = "") -> None:
        super().__init__()
        self._info = logging.Formatter(f"{prefix}[%(asctime)s] %(message)s", "%H:%M:%S")
        self._other = logging.Formatter(
            f"{prefix}[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S"
        )

    def format(self, record: logging.LogRecord) -> str:
        return (self._info if record.levelno == logging.INFO else self._other).format(record)


class TqdmStreamHandler(logging.Handler):
    """Writes to the *current* ``sys.stderr`` through ``tqdm.write`` so open bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_console_logging(*, rank: int, log_file: Path | None = None, level: str = "INFO") -> None:
    """Configure the root logger for this process; safe to call again (handlers are replaced).

    Rank 0 logs at ``level`` to stderr (concise) and, if ``log_file`` is given, to that file with
    full timestamps. Other ranks log WARNING and above to stderr, prefixed with ``[rank N]``.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(handler)
        handler.close()

    threshold = logging.getLevelName(level.upper()) if rank == 0 else logging.WARNING
    if not isinstance(threshold, int):
        raise ValueError(f"unknown log level {level!r}; expected DEBUG, INFO, WARNING or ERROR")

    console = TqdmStreamHandler()
    console.setFormatter(ConciseFormatter(prefix="" if rank == 0 else f"[rank {rank}] "))
    handlers: list[logging.Handler] = [console]
    if rank == 0 and log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        file_handler.setFormatter(logging.Formatter(file_format, "%Y-%m-%d %H:%M:%S"))
        handlers.append(file_handler)
    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
        handler.setLevel(threshold)
        root.addHandler(handler)
    root.setLevel(threshold)


def progress(
    iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", rank: int = 0
) -> tqdm:
    """A transient tqdm bar on stderr for rank 0; on other ranks a silent passthrough."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=rank != 0,
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
