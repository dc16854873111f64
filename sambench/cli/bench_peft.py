"""PEFT cost benchmark: ``python tools/bench_peft.py [--backbone B] [--steps N] [--batch-size N] [--precision P] [--device D]``.

Full fine-tuning vs LoRA vs frozen encoder for ``sam_prompted`` (GT boxes, Dice + BCE, AdamW) on
a random-weight SAM (default ``sam_vit_b``) at 1024², side by side in one run: step time, peak
memory and trainable parameters, each also as a ratio to full fine-tuning (a Markdown table on
stdout, progress on stderr). Rows (``peft_workload``: ``method.peft`` presets ``full``, ``lora``,
``none``):

- full fine-tuning: image encoder, prompt encoder and mask decoder train;
- LoRA r=8 on every encoder block's attention qkv/proj, the rest of the encoder frozen, decoder trains;
- frozen encoder, embedding computed: the decoder trains; the image embedding is computed in
  every step, without a graph (no encoder parameter needs a gradient);
- frozen encoder, cached embeddings: the same, the embedding read from sambench's on-disk cache
  (how sambench trains a frozen encoder; the cache is filled by the warm-up step);
- with ``trainer.activation_checkpointing`` available (``set_activation_checkpointing`` on the
  backbone), also full fine-tuning and LoRA with every encoder block checkpointed.

Step time: median of ``--steps`` optimizer steps after one warm-up step. Peak memory: on CUDA
``max_memory_allocated`` over the row (weights, gradients, AdamW moments, activations), each row
in the same process after freeing the previous one; on CPU each row runs in a fresh process and
reports that process's peak resident set (the whole process: Python, torch, weights, optimizer,
activations) and its growth over the steps (above the level after building the model).
Images: generated, 1024², 16 instances each (``--instances``; sam_prompted's ``max_train_instances``).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile

import torch

from sambench.cli.bench_report import markdown_table, peak_rss_mib, positive_int, timed_ms
from sambench.cli.bench_report import progress as report_progress
from sambench.cli.peft_workload import (BACKBONES, MAX_INSTANCES, build_method,
                                        synthetic_batch, total_loss)

#: row -> (label, mode, checkpointing, cached embeddings)
ROWS = {
    "full": ("full fine-tuning", "full", False, False),
    "lora": ("LoRA r=8 (encoder attention)", "lora", False, False),
    "frozen": ("frozen encoder, embedding computed (no grad)", "frozen", False, False),
    "frozen_cached": ("frozen encoder, cached embeddings", "frozen", False, True),
    "full_ckpt": ("full fine-tuning + activation checkpointing", "full", True, False),
    "lora_ckpt": ("LoRA r=8 + activation checkpointing", "lora", True, False),
}
CHECKPOINTED = ("full_ckpt", "lora_ckpt")


def progress(message: str) -> None:
    report_progress(message, tag="bench-peft")


def run_row(args, row: str) -> dict:
    """One row in this process: build, one warm-up step, ``args.steps`` timed steps."""
    from sambench.engine.precision import autocast

    label, mode, checkpointing, cached = ROWS[row]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with tempfile.TemporaryDirectory(prefix="bench-peft-") as cache:
        method, params = build_method(BACKBONES[args.backbone], mode, device, cache_dir=cache if cached else None,
                                      checkpointing=checkpointing)
        batch = synthetic_batch(args.batch_size, args.image_size, instances=args.instances)
        optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-6)
        built_rss = peak_rss_mib()

        def step():
            with autocast(device, args.precision):
                loss = total_loss(method, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()
        times = [timed_ms(step, device) for _ in range(args.steps)]
        result = {"row": row, "ms": statistics.median(times), "min_ms": min(times), **params}
        if cuda:
            result["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        else:
            result["peak_mib"], result["growth_mib"] = peak_rss_mib(), peak_rss_mib() - built_rss
        del method, optimizer, batch
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def run_in_fresh_process(args, row: str) -> dict:
    command = [sys.executable, "-m", "sambench.cli.bench_peft", "--worker", row, "--backbone", args.backbone,
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--precision", args.precision,
               "--device", args.device, "--image-size", str(args.image_size), "--instances", str(args.instances)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(f"row {row} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure(args) -> list[dict]:
    """Every row: CUDA (peaks reset per row) or ``--shared-process``: in this process; else one fresh process per row."""
    shared = args.device.startswith("cuda") or args.shared_process
    results = []
    for row in args.rows:
        progress(f"{ROWS[row][0]}: {args.steps} steps {'here' if shared else 'in a fresh process'} ({args.device})")
        results.append(run_row(args, row) if shared else run_in_fresh_process(args, row))
    return results


def ratio(value: float, reference: float) -> str:
    return f"{value / reference:.3f}" if reference else "n/a"


def report(args, results: list[dict]) -> str:
    cuda = args.device.startswith("cuda")
    reference = next((r for r in results if r["row"] == "full"), results[0])
    memory = "peak GPU MiB (max allocated)" if cuda else "peak RSS MiB (process)"
    headers = ["mode", "trainable params", "× full", "median ms/step", "× full", memory, "× full"]
    if not cuda:
        headers.append("RSS growth in steps MiB")
    rows = []
    for r in results:
        cells = [ROWS[r["row"]][0], f"{r['trainable']:,}", ratio(r["trainable"], reference["trainable"]), f"{r['ms']:.0f}",
                 ratio(r["ms"], reference["ms"]), f"{r['peak_mib']:.0f}", ratio(r["peak_mib"], reference["peak_mib"])]
        if not cuda:
            cells.append(f"{r['growth_mib']:.0f}")
        rows.append(cells)
    shared = "; all rows in one process: peaks include the earlier rows' (not comparable)" \
        if args.shared_process and not cuda else ""
    notes = (f"{args.steps} timed AdamW steps (median) after 1 warm-up; batch {args.batch_size} × {args.image_size}² "
             f"images with {args.instances} GT boxes each; {args.precision}; random weights. Total parameters: "
             f"{reference['total']:,} (+ adapters for LoRA). The 'embedding computed' row runs the frozen encoder in every "
             f"step (no graph kept); the 'cached' row reads the embedding from the on-disk cache (sambench's default for a "
             f"frozen encoder). Memory: " + ("CUDA max_memory_allocated above the allocations before the row (weights, "
                                              "gradients, AdamW moments, activations)." if cuda else
                                              "each row's own process, peak resident set (everything the process "
                                              f"holds, incl. ~0.4 GiB of Python/torch){shared}."))
    title = f"## PEFT cost: sam_prompted on {args.backbone}, {args.device}\n\n"
    return title + markdown_table(headers, rows) + "\n\n" + notes


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="sam_vit_b")
    parser.add_argument("--steps", type=positive_int, default=3, help="timed optimizer steps per row (median)")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--image-size", type=positive_int, default=1024,
                        help="side of the generated images (SAM encodes 1024² either way; smaller: cheaper loss, tests)")
    parser.add_argument("--instances", type=positive_int, default=MAX_INSTANCES,
                        help=f"GT boxes (prompts) per image, at most {MAX_INSTANCES} (sam_prompted's max_train_instances)")
    parser.add_argument("--rows", default=None, help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--shared-process", action="store_true",
                        help="CPU: all rows in this process (fast test run; memory then not per row)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()] if args.rows else list(ROWS)
    if args.instances > MAX_INSTANCES:
        parser.error(f"--instances: at most {MAX_INSTANCES}")
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_row(args, args.worker)))
        return 0
    try:
        results = measure(args)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(report(args, results))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
