"""Run logging on rank 0: console (with progress bars), ``log.jsonl`` always, wandb optionally.

Only the composition root calls :func:`build_run_logger`; the engine receives the returned
:class:`RunLogger` and never needs to know which backends are on.
"""

from sambench.logging.run_logger import RunLogger, build_run_logger

__all__ = ["RunLogger", "build_run_logger"]
