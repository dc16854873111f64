"""Weights & Biases backend that can never stop a run.

Every wandb call is guarded: the first exception logs one warning and turns this logger off for
the rest of the run. ``online`` without an API key falls back to ``offline`` (sync later with
``wandb sync <run_dir>/wandb/offline-run-*``), so wandb never prompts for a login. The wandb run
id is kept in ``<run_dir>/wandb/run_id``: a run resumed in its folder (a requeued Slurm job, a
rerun after a preemption) continues the same wandb run (``resume="allow"``).
"""

from __future__ import annotations

import logging
import netrc
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from sambench.errors import ConfigError
from sambench.logging.jsonl import to_plain

log = logging.getLogger(__name__)

WANDB_MODES = ("online", "offline", "disabled")
# wandb stores masks as 8-bit PNGs: ids above this wrap around to 1..255 (0 stays background).
_MAX_MASK_ID = 255


def has_wandb_api_key() -> bool:
    """True if ``WANDB_API_KEY`` is set or the netrc file has an entry for the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return host is not None and netrc.netrc(netrc_path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_run_id(run_dir: Path) -> str:
    """The wandb run id of ``run_dir``: the one saved in ``wandb/run_id``, else a new one saved there."""
    from sambench.files import write_text_atomic  # sambench.files imports this package

    path = run_dir / "wandb" / "run_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, run_id + "\n")
    return run_id


class WandbLogger:
    """One wandb run with its files in ``<run_dir>/wandb``; nothing at all for ``"disabled"``."""

    def __init__(
        self,
        *,
        run_dir: Path,
        mode: str,
        project: str,
        entity: str | None,
        group: str,
        name: str,
        job_type: str,
        tags: list[str],
        config: dict,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(f"logger.wandb={mode!r} is not valid; expected one of {WANDB_MODES}")
        if mode == "online" and not has_wandb_api_key():
            mode = "offline"
            log.info(
                "no wandb API key (WANDB_API_KEY or ~/.netrc): logging offline; upload later with "
                "`wandb sync %s/wandb/offline-run-*`",
                run_dir,
            )
        self.mode = mode
        self._wandb: Any = None
        self._run: Any = None
        if mode == "disabled":
            return
        try:
            import wandb

            Path(run_dir).mkdir(parents=True, exist_ok=True)
            run_id = wandb_run_id(Path(run_dir))
            settings = wandb.Settings(
                silent=True,  # no banner / sync hints on the console
                console="off",  # leave sys.stdout/sys.stderr alone
                save_code=False,
            )
            self._run = wandb.init(
                dir=str(run_dir),
                mode=mode,
                project=project,
                entity=entity,
                group=group,
                name=name,
                job_type=job_type,
                tags=list(tags),
                config=config,
                settings=settings,
                id=run_id,
                resume="allow",
            )
            self._wandb = wandb
        except Exception as error:  # noqa: BLE001 - wandb must never stop a run
            self._disable("init", error)

    @property
    def enabled(self) -> bool:
        """False when disabled by config or after a wandb failure."""
        return self._run is not None

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Log scalar metrics at ``step`` (numpy/torch scalars are converted first)."""
        if self._run is None:
            return
        try:
            self._run.log(to_plain(metrics), step=step)
        except Exception as error:  # noqa: BLE001
            self._disable("log", error)

    def log_overlays(self, items: list[dict], step: int, key: str) -> None:
        """Log images with prediction / ground-truth masks under ``key``.

        Each item: ``image`` HxWx3 uint8, ``pred`` HxW int (0 background, i = instance or class
        id), ``gt`` HxW int or None, ``caption`` str, ``class_labels`` {id: name} or None.
        """
        if self._run is None or not items:
            return
        try:
            images = [self._wandb_image(item) for item in items]
            self._run.log({key: images}, step=step)
        except Exception as error:  # noqa: BLE001
            self._disable("log_overlays", error)

    def finish(self) -> None:
        """Close the wandb run (writes the offline files); further calls do nothing."""
        if self._run is None:
            return
        run, self._run = self._run, None
        try:
            run.finish()
        except Exception as error:  # noqa: BLE001
            self._disable("finish", error)

    def _wandb_image(self, item: dict) -> Any:
        masks = {"prediction": _mask_layer(item["pred"], item.get("class_labels"))}
        if item.get("gt") is not None:
            masks["ground_truth"] = _mask_layer(item["gt"], item.get("class_labels"))
        return self._wandb.Image(
            np.asarray(to_numpy(item["image"]), dtype=np.uint8),
            masks=masks,
            caption=item.get("caption", ""),
        )

    def _disable(self, action: str, error: Exception) -> None:
        self._run = None
        reason = f"{action}: {type(error).__name__}: {error}"
        log.warning("wandb failed (%s); continuing without wandb", reason)


def to_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or a (CPU or GPU) torch tensor."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _mask_layer(ids: Any, class_labels: dict[int, str] | None) -> dict:
    """wandb's ``{"mask_data", "class_labels"}`` for an HxW id map; ids > 255 wrap to 1..255."""
    ids = to_numpy(ids).astype(np.int64)
    if ids.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {ids.shape}")
    wrapped = np.where(ids > 0, (ids - 1) % _MAX_MASK_ID + 1, 0).astype(np.uint8)
    if class_labels is None:
        labels = {int(i): ("background" if i == 0 else f"mask {i}") for i in np.unique(wrapped)}
        labels.setdefault(0, "background")
    else:
        labels = {int(i): str(name) for i, name in class_labels.items()}
    return {"mask_data": wrapped, "class_labels": labels}
