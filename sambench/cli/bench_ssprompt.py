"""SSPrompt efficiency: ``python tools/bench_ssprompt.py [--backbone B] [--clip C] [--classes N] ...``.

Training-step time and peak memory of ``ssprompt`` (and ``semprompt``) vs ``coop`` on the same
SAM, CLIP, batch and images, side by side in one run (a Markdown table on stdout, progress on stderr). The paper
(Table 7, ADE20K, 150 classes): 56.0 ms / 3.82 GB vs CoOp 87.5 ms / 8.22 GB, i.e. −36 % time and
−53.5 % memory; the target is at least as large a saving.

Each method runs in its own process, so peaks do not mix: SAM and CLIP image features are
computed (and cached) first, then ``--steps`` optimizer steps are timed (median) after one
warm-up step. Peak memory: CUDA ``max_memory_allocated`` above the level before the steps, or on
CPU the growth of the process's peak resident set during the steps. Models get random weights
(no checkpoints offline; costs do not depend on weight values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile

import numpy as np
import torch

from sambench.cli.bench_report import SAM_TINY, SAM_VIT_B, markdown_table, peak_rss_mib, positive_int, timed_ms
from sambench.cli.bench_report import progress as report_progress

BACKBONES = {"sam_vit_b": SAM_VIT_B, "sam_tiny": SAM_TINY}
PAPER = {"time": -36.0, "memory": -53.5}
#: ssprompt vs coop is the paper's comparison; semprompt (semantic prompts only, the side CoOp
#: also learns) separates the text-encoder saving from the cost of learning spatial prompts.
METHODS = ("ssprompt", "semprompt", "coop")


def progress(message: str) -> None:
    report_progress(message, tag="bench-ssprompt")


def build(args, method: str):
    from sambench.backbones.sam import SamBackbone
    from sambench.registry import METHODS, load_plugins

    load_plugins()
    torch.manual_seed(0)
    sam = SamBackbone(**BACKBONES[args.backbone], cache_dir=args.cache)
    clip = {"model": args.clip, "allow_random_init": True, "dense_size": args.dense_size}
    names = [f"class {i}" for i in range(args.classes)]
    return METHODS.get(method)(sam=sam, class_names=names, clip=clip, grid=args.grid, flip=0.0, cache_dir=args.cache)


def fake_batch(args):
    from sambench.structures import Batch, Sample

    rng = np.random.default_rng(0)
    samples = []
    for i in range(args.batch):
        image = rng.integers(0, 255, (args.height, args.width, 3), dtype=np.uint8)
        labels = torch.as_tensor(rng.integers(0, args.classes, (args.height, args.width)), dtype=torch.long)
        samples.append(Sample(index=i, image=image, semantic=labels))
    return Batch(samples)


def prepared(args, method: str):
    """``method`` built on ``args.device`` and its batch, with the frozen SAM and CLIP image
    features already cached (the timed steps only run what trains)."""
    model = build(args, method).to(torch.device(args.device))
    batch = fake_batch(args)
    with torch.no_grad():
        model.sam.embed_images([s.image for s in batch])
        model.clip.dense_features([s.image for s in batch])
    return model, batch


def worker(args) -> dict:
    """One method in this process: warm caches, one warm-up step, then timed steps."""
    device = torch.device(args.device)
    model, batch = prepared(args, args.worker)
    optimizer = torch.optim.SGD(list(model.trainable_parameters().values()), lr=1e-3, momentum=0.9)

    def step():
        loss = model.training_step(batch)["loss_ce"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        base_gpu = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = peak_rss_mib()
    step()
    times = [timed_ms(step, device) for _ in range(args.steps)]
    memory = (torch.cuda.max_memory_allocated(device) - base_gpu) / 2**20 if cuda else peak_rss_mib() - base_rss
    return {"ms": statistics.median(times), "min_ms": min(times), "memory_mb": memory,
            "trainable": sum(p.numel() for p in model.trainable_parameters().values())}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="sam_tiny")
    parser.add_argument("--clip", default="tiny", help="open_clip model (random weights), e.g. ViT-B-16; default tiny")
    parser.add_argument("--classes", type=positive_int, default=150, help="semantic prompts (ADE20K: 150)")
    parser.add_argument("--grid", type=positive_int, default=10, help="spatial prompts = grid² (paper: 100)")
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--steps", type=positive_int, default=5)
    parser.add_argument("--height", type=positive_int, default=384)
    parser.add_argument("--width", type=positive_int, default=512)
    parser.add_argument("--dense-size", type=positive_int, default=448)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-ssprompt-") as cache:
        for method in METHODS:
            progress(f"{method}: {args.steps} steps in a fresh process ({args.device})")
            child = subprocess.run([sys.executable, "-m", "sambench.cli.bench_ssprompt", *argv, "--worker", method,
                                    "--cache", cache], capture_output=True, text=True)
            if child.returncode != 0:
                print(child.stderr[-3000:], file=sys.stderr)
                return 1
            results[method] = json.loads(child.stdout.strip().splitlines()[-1])
    co = results["coop"]
    unit = "GPU MiB above start" if args.device.startswith("cuda") else "CPU peak RSS growth MiB"
    rows = [[name, f"{r['ms']:.1f}", f"{r['min_ms']:.1f}", f"{r['memory_mb']:.0f}", r["trainable"]] for name, r in results.items()]
    print(f"## SSPrompt vs CoOp training step ({args.backbone}, CLIP {args.clip}, {args.classes} classes, "
          f"{args.grid ** 2} spatial prompts, batch {args.batch}, {args.height}x{args.width}, {args.device})\n")
    print(markdown_table(["method", "median ms/step", "min ms", unit, "trainable params"], rows))
    print()
    for method in METHODS[:-1]:
        r = results[method]
        time_change = (r["ms"] / co["ms"] - 1) * 100
        memory_change = (r["memory_mb"] / co["memory_mb"] - 1) * 100 if co["memory_mb"] > 0 else float("nan")
        verdict_time = "PASS" if time_change <= PAPER["time"] else "MISS"
        verdict_memory = "PASS" if memory_change <= PAPER["memory"] else "MISS"
        print(f"{method} vs coop: time {time_change:+.1f} % (paper's ssprompt {PAPER['time']:+.1f} %: {verdict_time}), "
              f"memory {memory_change:+.1f} % (paper's ssprompt {PAPER['memory']:+.1f} %: {verdict_memory})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
