"""What the benchmark scripts share: stderr progress, Markdown tables, argument types, timing
and peak-memory helpers, and the random-weight SAM presets they time (timings do not depend on
weight values)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sambench.engine.cost import peak_rss_mib  # noqa: F401  (re-exported: the benchmarks import it from here)

SAM_TINY = dict(
    name="sam_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
    encoder_global_attn_indexes=[1], allow_random_init=True,
)
SAM_VIT_B = dict(name="sam_vit_b", variant="vit_b", allow_random_init=True)
SAM_VIT_H = dict(name="sam_vit_h", variant="vit_h", allow_random_init=True)


def progress(message: str, tag: str = "bench") -> None:
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_ms(call, device: torch.device) -> float:
    """Milliseconds of ``call()``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return (time.perf_counter() - start) * 1000


