"""tools/bench_peft.py and tools/memory_estimate.py on the tiny SAM: the tables are printed with
their rows and ratios (numbers, never judged as timings)."""

from __future__ import annotations

import re

import pytest
from sambench.testing import run_tool

pytestmark = pytest.mark.slow
NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("| ")][1:]  # no header
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_bench_prints_full_lora_frozen_side_by_side_with_ratios():
    result = run_tool("tools/bench_peft.py", "--backbone", "sam_tiny", "--steps", "1", "--image-size", "128",
                      "--instances", "2", "--rows", "full,lora,frozen", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert [r[0] for r in rows] == ["full fine-tuning", "LoRA r=8 (encoder attention)",
                                    "frozen encoder, embedding computed (no grad)"]
    full, lora, frozen = rows
    assert full[2] == full[4] == full[6] == "1.000"
    for row in rows:
        assert all(NUMBER.match(cell.replace(",", "")) for cell in row[1:]), row
    trainable = [int(r[1].replace(",", "")) for r in rows]
    assert trainable[0] > trainable[1] > trainable[2] > 0  # LoRA adds r=8 adapters to the frozen-encoder run
    assert float(lora[2]) == pytest.approx(trainable[1] / trainable[0], abs=1e-3)
    assert "peak RSS MiB (process)" in result.stdout and "fresh process" in result.stderr


def test_memory_estimate_prints_every_configuration():
    result = run_tool("tools/memory_estimate.py", "--backbones", "sam_tiny", "--precisions", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert [(r[1], r[3]) for r in rows] == [(mode, ckpt) for mode in ("full fine-tuning", "LoRA r=8 (encoder attention)",
                                                                      "frozen encoder") for ckpt in ("off", "on")]
    for row in rows:
        assert all(NUMBER.match(cell.replace(",", "")) for cell in row[4:]), row
    full_off, full_on = rows[0], rows[1]
    assert float(full_on[6]) < float(full_off[6])  # checkpointing keeps fewer activations per image
    assert result.stdout.count(": equal") == 3  # the small-encoder extrapolation matches the full-depth count
