"""Test support shipped with the library: synthetic datasets in the real on-disk layouts
(``*_synthetic.py``), the tiny SAM preset and two runners for the command-line tools:
:func:`run_job` runs the ``train``/``eval`` job in the test process (tests of results, files and
metrics), :func:`run_tool` starts ``python tools/<script>`` (the command-line contract: argv,
Hydra's own handling, exit codes, torchrun, tools that are not Hydra jobs).

Tests import these from here (never from ``conftest``). ``needs_shared`` marks a test that
reads ``../shared/data``; ``tests/conftest.py`` skips it, saying why, when the folder is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sambench import REPO_ROOT
from sambench.testing.in_process import JobResult, run_job  # noqa: F401  (re-exported)

REPO = REPO_ROOT
#: Small real data samples beside the checkout (``../shared/data``; may be a symlink or absent).
SHARED_DATA = REPO.parent / "shared" / "data"
#: ``SamBackbone`` keyword arguments of a 2-block, 32-wide ViT with SAM's real prompt encoder and decoder.
TINY_SAM = dict(
    name="sam_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    encoder_global_attn_indexes=[1], allow_random_init=True,
)
#: A subprocess that has not finished after this long is hung, not slow (a loaded 2-core machine
#: runs a CLI test in well under a minute; the limit only keeps a hang from eating the CI budget).
TOOL_TIMEOUT_S = 1800

needs_shared = pytest.mark.needs_shared


def run_tool(*args: str, torchrun: int = 0, env: dict | None = None, cwd: Path = REPO,
             timeout: int = TOOL_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``python tools/<script> args`` (or under ``torchrun --nproc_per_node``); scripts are
    given relative to the repository."""
    prefix = [sys.executable]
    if torchrun:
        prefix += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*prefix, str(REPO / args[0]), *args[1:]], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
