"""A Hydra callback that ends every sweep (``-m``) with its leaderboard.

After the last job of a sweep (any launcher: Hydra's basic one, ``submitit_local``,
``submitit_slurm``; the submitter waits for the jobs), :mod:`tools/summarize.py
<sambench.cli.summarize>` runs over the sweep folder: mean ± std over the seeds of each (method,
dataset, backbone), printed on stdout and written to ``<sweep>/summary.md`` and
``<sweep>/summary.csv``. The submitter also prints the sweep folder when the sweep starts (under
submitit the jobs log into ``<sweep>/.submitit/<job id>/``). Registered in ``conf/train.yaml``
(``hydra.callbacks``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from sambench.cli import summarize
from sambench.files import write_text_atomic

log = logging.getLogger("sambench")


def summarize_sweep(sweep_dir: Path) -> str | None:
    """Write ``summary.md`` and ``summary.csv`` into ``sweep_dir``; return the Markdown (None
    when no run of the sweep finished: the warnings say why)."""
    table, warnings = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(table), contextlib.redirect_stderr(warnings):
        status = summarize.main([str(sweep_dir), "--csv", str(sweep_dir / "summary.csv")])
    for line in warnings.getvalue().splitlines():
        if line.startswith(("warning:", "error:")):
            log.warning("sweep summary: %s", line)
    if status != 0:
        return None
    write_text_atomic(sweep_dir / "summary.md", table.getvalue())
    return table.getvalue()


class SweepSummary(Callback):
    """``on_multirun_start``: print the sweep folder; ``on_multirun_end``: :func:`summarize_sweep`
    on it and print the table."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        print(f"sweep folder: {_sweep_dir(config)}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = _sweep_dir(config)
        text = summarize_sweep(sweep_dir)
        if text is not None:
            print(f"sweep summary ({sweep_dir / 'summary.md'}, summary.csv):\n{text.rstrip()}", flush=True)


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir)).absolute()
