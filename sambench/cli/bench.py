"""Benchmark: ``python tools/bench.py [--images N] [--steps N] [--skip-vit-b]`` (``make bench``).

Prints measured numbers side by side, as Markdown tables on stdout (progress goes to stderr):

1. wall time of the embedded default run (``tools/train.py``), cold then warm embedding cache;
2. SAM image-encoder time per image, cold vs warm cache, in-process (tiny SAM and ViT-B);
3. training throughput on CPU, 1 rank vs 2 ranks (torchrun, gloo) at the same global batch.

A benchmark reports, it does not judge: there are no thresholds. Exit status 1 if a subprocess fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sambench import REPO_ROOT
from sambench.cli.bench_report import SAM_TINY, SAM_VIT_B, markdown_table, positive_int, progress

TRAIN_SCRIPT = REPO_ROOT / "tools" / "train.py"
IMAGE_SHAPE = (480, 640, 3)


class ToolFailed(RuntimeError):
    """A benchmarked subprocess exited with a non-zero status."""


# ----- subprocess runs of tools/train.py --------------------------------------------------------
def run_train(overrides: list[str], nproc: int = 1, threads: int | None = None) -> float:
    """Run ``tools/train.py overrides`` (under torchrun when ``nproc`` > 1); return wall seconds."""
    return run_script(TRAIN_SCRIPT, overrides, nproc=nproc, threads=threads)


def run_script(script: Path, overrides: list[str], nproc: int = 1, threads: int | None = None) -> float:
    """Run the Hydra tool ``script`` (``tools/train.py`` or ``tools/eval.py``) with ``overrides``,
    under torchrun when ``nproc`` > 1; return wall seconds. Raises :class:`ToolFailed`."""
    command = [sys.executable]
    if nproc > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += [str(script), "logger.wandb=disabled", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise ToolFailed(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return seconds


def final_miou(run_dir: Path) -> float:
    return json.loads((run_dir / "metrics.json").read_text())["mIoU"]


def last_samples_per_s(run_dir: Path) -> float:
    """``train/samples_per_s`` of the last line of ``log.jsonl`` that has it."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r["train/samples_per_s"] for r in records if "train/samples_per_s" in r][-1]


# ----- the three sections -------------------------------------------------------------------------
def bench_default_run(work: Path, cache_dir: Path) -> str:
    """Embedded default run, cold cache then warm cache (same cache folder, fresh run folders)."""
    rows = []
    for label in ("cold (empty cache)", "warm (cache reused)"):
        run_dir = work / f"default-{label.split()[0]}"
        progress(f"embedded default run, {label} ...")
        seconds = run_train([f"hydra.run.dir={run_dir}", f"cache.dir={cache_dir}"])
        rows.append([label, f"{seconds:.1f}", f"{final_miou(run_dir):.2f}"])
    return markdown_table(["`python tools/train.py`", "wall time (s)", "final mIoU (%)"], rows)


@torch.no_grad()
def time_encoder(sam_kwargs: dict, num_images: int, cache_dir: Path) -> tuple[float, float]:
    """ms/image of ``embed_images``: cold (encoder + cache write) and warm (cache read)."""
    from sambench.backbones.sam import SamBackbone

    backbone = SamBackbone(**sam_kwargs, cache_dir=str(cache_dir)).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8) for _ in range(num_images)]
    backbone.encode(backbone.preprocess(images[0]))  # untimed warm-up: one-time allocations
    timings = []
    for _ in ("cold", "warm"):
        started = time.perf_counter()
        backbone.embed_images(images)
        timings.append((time.perf_counter() - started) * 1000 / num_images)
    return timings[0], timings[1]


def bench_encoder(work: Path, num_images: int, skip_vit_b: bool) -> str:
    models = [("sam_tiny (random init, 2-block ViT, width 32)", SAM_TINY)]
    if not skip_vit_b:
        models.append(("sam_vit_b (random init, no checkpoint)", SAM_VIT_B))
    rows = []
    for label, kwargs in models:
        progress(f"encoder timing: {kwargs['name']}, {num_images} images ...")
        cold, warm = time_encoder(kwargs, num_images, work / f"cache-{kwargs['name']}")
        rows.append([label, f"{cold:.1f}", f"{warm:.1f}", f"{cold / warm:.1f}x"])
    return markdown_table(["backbone", "cold cache (ms/image)", "warm cache (ms/image)", "speed-up"], rows)


def bench_ddp(work: Path, cache_dir: Path, steps: int) -> str:
    """Same global batch (2) on 1 rank and on 2 torchrun ranks; cache already warm."""
    total_threads = torch.get_num_threads()
    rows = []
    for nproc, batch in ((1, 2), (2, 1)):
        run_dir = work / f"ddp-{nproc}"
        threads = max(1, total_threads // nproc)
        progress(f"training throughput, {nproc} rank(s) x batch {batch}, {steps} steps ...")
        seconds = run_train(
            [f"hydra.run.dir={run_dir}", f"cache.dir={cache_dir}", f"trainer.max_steps={steps}",
             f"trainer.batch_size={batch}", "trainer.device=cpu", f"logger.log_every={steps}",
             "trainer.eval.at_end=false"],
            nproc=nproc, threads=threads,
        )
        launcher = "python" if nproc == 1 else "torchrun, gloo"
        rows.append([f"{nproc} ({launcher})", batch, nproc * batch, threads,
                     f"{last_samples_per_s(run_dir):.2f}", f"{seconds:.1f}"])
    return markdown_table(
        ["ranks", "batch/rank", "global batch", "threads/rank", "train samples/s", "wall time (s)"], rows
    )


# ----- entry point ----------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print measured numbers (Markdown): embedded default run time, SAM encoder time "
        "cold vs warm cache, CPU training throughput 1 vs 2 ranks."
    )
    parser.add_argument("--images", type=positive_int, default=4,
                        help="random 480x640 images for the encoder timing (default 4)")
    parser.add_argument("--steps", type=positive_int, default=20,
                        help="optimizer steps of each DDP throughput run (default 20)")
    parser.add_argument("--skip-vit-b", action="store_true",
                        help="skip the ViT-B encoder timing (the slowest part)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    print(f"# sambench benchmark\n\ntorch {torch.__version__} | CPUs: {os.cpu_count()} | "
          f"torch threads: {torch.get_num_threads()} | CUDA: {torch.cuda.is_available()}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="sambench-bench-") as tmp:
        work = Path(tmp)
        default_cache = work / "cache-default"
        try:
            default_table = bench_default_run(work, default_cache)
            encoder_table = bench_encoder(work, args.images, args.skip_vit_b)
            ddp_table = bench_ddp(work, default_cache, args.steps)
        except ToolFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print("## 1. Embedded default run (subprocess; fresh run folder each time, same cache folder)\n")
    print(default_table + "\n")
    print(f"## 2. SAM image encoder, `embed_images` in-process ({args.images} random 480x640 RGB images)\n")
    print(encoder_table + "\n")
    print("Cold = empty cache: preprocess + encoder + cache write; warm = the same images read back from the "
          "cache. One untimed warm-up encode first. ViT-B uses random weights: timing does not depend on "
          "weight values.\n")
    print(f"## 3. Training throughput on CPU, 1 vs 2 ranks ({args.steps} steps, warm cache, no evaluation)\n")
    print(ddp_table + "\n")
    print("Samples/s is `train/samples_per_s` from the last log.jsonl line (training steps only); wall time "
          f"includes start-up and the final checkpoint. On a {os.cpu_count()}-core machine the two ranks share "
          "the cores, so no speed-up is expected: the point is that DDP works and what it costs.\n")
    print(f"Total benchmark time: {time.perf_counter() - started:.0f} s")
    return 0
