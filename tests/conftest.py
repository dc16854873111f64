"""Shared fixtures: isolated caches and a trained run of the embedded default.

Markers (``setup.cfg``): ``needs_shared`` tests read ``../shared/data`` and are skipped, with that
reason, when the folder is absent; ``distributed`` tests start torchrun; ``slow`` tests take more
than a few seconds. ``make test-fast`` runs ``-m "not slow and not distributed"``; ``make test``
runs everything. Helpers (tiny SAM, synthetic data, ``run_job``, ``run_tool``) live in ``sambench.testing``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sambench.testing import SHARED_DATA, run_job


def pytest_collection_modifyitems(config, items):
    """Skip ``needs_shared`` tests, saying why, when ``../shared/data`` is absent."""
    if SHARED_DATA.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs ../shared/data beside the checkout ({SHARED_DATA} is absent)")
    for item in items:
        if "needs_shared" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    """Keep caches and wandb away from the user's home; never reach a network."""
    cache = tmp_path_factory.mktemp("sambench-cache")
    saved = {k: os.environ.get(k) for k in ("SAMBENCH_CACHE_DIR", "WANDB_MODE", "WANDB_SILENT", "HF_HUB_OFFLINE")}
    os.environ.update(SAMBENCH_CACHE_DIR=str(cache), WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    os.environ.pop("WANDB_MODE", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder of the embedded default trained long enough to predict real masks
    (sam_prompted, tiny SAM, 5 generated images, 20 steps), trained in-process (``tools/train.py``'s job)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_job(
        "train", "dataset.num_images=5", "trainer.max_steps=20", "trainer.device=cpu",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
