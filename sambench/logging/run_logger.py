"""The engine's single logging entry point: ``log.jsonl`` always, wandb optionally, rank 0 only."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from sambench.logging.jsonl import JsonlWriter
from sambench.logging.wandb_logger import WandbLogger


class RunLogger:
    """Sends metrics to ``log.jsonl`` and wandb. With no writer at all every method is a no-op.

    ``num_overlays`` (images per evaluation) and ``log_every`` (steps between train logs) are
    read by the engine; this class does not throttle anything itself.
    """

    def __init__(
        self,
        *,
        jsonl: JsonlWriter | None = None,
        wandb: WandbLogger | None = None,
        num_overlays: int = 4,
        log_every: int = 10,
    ) -> None:
        self._jsonl = jsonl
        self._wandb = wandb
        self.num_overlays = num_overlays
        self.log_every = log_every

    @property
    def active(self) -> bool:
        """True on the process that writes (rank 0)."""
        return self._jsonl is not None or self._wandb is not None

    def log_metrics(self, metrics: dict, step: int, prefix: str = "") -> None:
        """Write ``{"step", "time" (unix seconds), prefix + name: value}`` to JSONL and wandb."""
        if not self.active:
            return
        named = {prefix + name: value for name, value in metrics.items()}
        if self._jsonl is not None:
            self._jsonl.write({"step": step, "time": time.time(), **named})
        if self._wandb is not None:
            self._wandb.log_metrics(named, step=step)

    def log_overlays(self, items: list[dict], step: int, key: str = "val/overlays") -> None:
        """Log mask overlays to wandb (see :meth:`WandbLogger.log_overlays`); JSONL skips images."""
        if self._wandb is not None:
            self._wandb.log_overlays(items, step=step, key=key)

    def finish(self) -> None:
        """Close the JSONL file and the wandb run; safe to call more than once."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def build_run_logger(
    *,
    run_dir: Path,
    rank: int,
    config: dict,
    method: str,
    dataset: str,
    backbone: str,
    job_type: str,
    wandb: str = "disabled",
    project: str = "sambench",
    entity: str | None = None,
    tags: Sequence[str] = (),
    num_overlays: int = 4,
    log_every: int = 10,
) -> RunLogger:
    """The run's logger: writes ``<run_dir>/log.jsonl`` (+ wandb) on rank 0, nothing elsewhere.

    The wandb run is grouped as ``"<method>/<dataset>"`` so one project compares methods and
    datasets; method, dataset and backbone are added to its tags and to its config under the
    ``sambench`` key (the resolved config's own ``method``/``dataset`` sections stay untouched).
    """
    if rank != 0:
        return RunLogger(num_overlays=num_overlays, log_every=log_every)
    run_dir = Path(run_dir)
    wandb_logger = None
    if wandb != "disabled":
        wandb_logger = WandbLogger(
            run_dir=run_dir,
            mode=wandb,
            project=project,
            entity=entity,
            group=f"{method}/{dataset}",
            name=f"{method}-{dataset}-{backbone}-{run_dir.name}",
            job_type=job_type,
            tags=list(dict.fromkeys([*tags, method, dataset, backbone])),
            config={
                **config,
                "sambench": {"method": method, "dataset": dataset, "backbone": backbone},
            },
        )
    return RunLogger(
        jsonl=JsonlWriter(run_dir / "log.jsonl"),
        wandb=wandb_logger,
        num_overlays=num_overlays,
        log_every=log_every,
    )
