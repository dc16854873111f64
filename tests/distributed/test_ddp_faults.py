"""A hung rank under torchrun (gloo): the waiting rank logs what it waits for and fails after
``trainer.collective_timeout`` with one error line, instead of waiting silently for 30 min."""

from __future__ import annotations

import time

import pytest

from sambench.testing import run_tool

pytestmark = pytest.mark.distributed

HUNG_RANK = """
import logging, sys, time
from sambench import dist
logging.basicConfig(level=logging.WARNING, format="%(message)s")
dist.init_distributed("cpu", timeout_s=float(sys.argv[1]))
if dist.rank() == 1:
    time.sleep(120)  # hung (as after SIGSTOP): never reaches the barrier in time
try:
    dist.barrier("the test barrier")
except dist.DistributedError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def test_hung_rank_is_reported_by_the_waiting_rank(tmp_path):
    script = tmp_path / "hung_rank.py"
    script.write_text(HUNG_RANK)
    start = time.monotonic()
    result = run_tool(str(script), "4", torchrun=2)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "rank 0 has waited" in result.stderr and "at the test barrier" in result.stderr
    assert "error: rank 0 waited" in result.stderr and "timed out: another rank is hung or far behind" in result.stderr
    assert "trainer.collective_timeout=4 s" in result.stderr
    assert elapsed < 100  # torchrun stops the hung rank once rank 0 has failed (it slept 120 s)
