"""Shared fixtures: a tiny SAM, isolated caches, and a runner for the command-line tools.

Tests that need the real data samples in ``../shared/data`` skip (with that reason) when the
folder is absent; everything else runs offline on generated data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_SAM = dict(
    name="sam_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    encoder_global_attn_indexes=[1], allow_random_init=True,
)

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data beside the checkout")


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


def run_tool(*args: str, torchrun: int = 0, env: dict | None = None, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python tools/<script> args`` (or under ``torchrun --nproc_per_node``); scripts are
    given relative to the repository."""
    prefix = [sys.executable]
    if torchrun:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*prefix, str(REPO / args[0]), *args[1:]], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder of the embedded default trained long enough to predict real masks
    (sam_prompted, tiny SAM, 5 generated images, 20 steps)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = run_tool(
        "tools/train.py", "dataset.num_images=5", "trainer.max_steps=20", "trainer.device=cpu",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir
