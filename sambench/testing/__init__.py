"""Test support shipped with the library: synthetic datasets in the real on-disk layouts
(``*_synthetic.py``), the tiny SAM preset and runners for the command-line tools:
:func:`run_job` runs the ``train``/``eval`` job in the test process (tests of results, files and
metrics), :func:`run_tool` starts ``python tools/<script>`` (the command-line contract: argv,
Hydra's own handling, exit codes, torchrun, tools that are not Hydra jobs),
:func:`run_tool_on_nodes` as several torchrun "nodes" on this machine and
:func:`run_tool_as_slurm_tasks` as the tasks of a faked Slurm job. Preemption test hooks are in
:mod:`sambench.testing.hooks`.

Tests import these from here (never from ``conftest``). ``needs_shared`` marks a test that
reads ``../shared/data``; ``tests/conftest.py`` skips it, saying why, when the folder is absent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import json
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


def scores(run_dir: Path) -> dict:
    """A run's ``metrics.json`` without its ``cost`` (which differs from run to run where the
    metrics are the same): what two runs that should agree are compared on."""
    metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    metrics.pop("cost", None)
    return metrics


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


def free_port() -> int:
    """A TCP port nothing listens on right now (for a rendezvous on 127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_processes(commands: list[list[str]], envs: list[dict], cwd: Path = REPO,
                  timeout: int = TOOL_TIMEOUT_S) -> list[subprocess.CompletedProcess]:
    """Start ``commands`` at once (each with ``os.environ`` + its env), wait for all."""
    processes = [subprocess.Popen(c, cwd=cwd, env={**os.environ, **e}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for c, e in zip(commands, envs)]
    results = []
    for command, process in zip(commands, processes):
        out, err = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    return results


def run_tool_on_nodes(*args: str, nodes: int = 2, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """``python tools/<script> args`` as ``nodes`` torchrun agents of one process each, meeting
    through a c10d rendezvous on 127.0.0.1 as agents on separate machines do (``--nnodes``)."""
    endpoint = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc_per_node=1",
               "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id=sambench-{endpoint}",
               str(REPO / args[0]), *args[1:]]
    return run_processes([command] * nodes, [env or {}] * nodes)


def run_tool_as_slurm_tasks(*args: str, tasks: int = 2, env: dict | None = None) -> list[subprocess.CompletedProcess]:
    """``python tools/<script> args`` as the ``tasks`` tasks of a faked one-node Slurm job step
    started by submitit (``SUBMITIT_EXECUTOR=slurm`` and the ``SLURM_*`` variables of each
    task; no torchrun): the ranks must come from that environment."""
    job = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "777", "SLURM_NTASKS": str(tasks),
           "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "localhost",
           "MASTER_PORT": str(free_port()), **(env or {})}
    envs = [{**job, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)} for i in range(tasks)]
    return run_processes([[sys.executable, str(REPO / args[0]), *args[1:]]] * tasks, envs)
