"""DIT benchmark: ``python tools/bench_dit.py [--backbone sam_vit_b|sam_tiny] [--repeats N] [--device D]``.

Inference time per image (batch 1, 512² canvas, one 20-token expression) of ``dit_layerwise``
vs ``sam_text`` on the same SAM and BERT, side by side in one run, as a Markdown table on stdout
(progress on stderr). Also timed: ``sam_text`` with SAM's own windowed encoder, for context.
The paper (Table 4, GPU): 123 ms (L-DIT) vs 120 ms (default SAM with boxes) / 123 ms (text);
target: L-DIT overhead ≤ 5 % over ``sam_text``.

SAM and BERT get random weights (no checkpoints offline; timings do not depend on weight values):
SAM ViT-B with bert-base-uncased sizes, or the tiny presets. The target is printed as PASS/MISS,
never enforced.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

from sambench.cli.bench_report import SAM_TINY, SAM_VIT_B, markdown_table, positive_int, timed_ms
from sambench.cli.bench_report import progress as report_progress
from sambench.structures import Batch, Sample

BACKBONES = {"sam_vit_b": SAM_VIT_B, "sam_tiny": SAM_TINY}
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, max_position_embeddings=512)
OVERHEAD_TARGET = 5.0  # percent
MODELS = [
    ("dit_layerwise (global attention)", "dit_layerwise", {}),
    ("sam_text (global attention)", "sam_text", {}),
    ("sam_text (SAM's windowed encoder)", "sam_text", {"attention": "windowed"}),
]
EXPRESSION = "the man in the blue shirt standing on the left next to the white car"


def progress(message: str) -> None:
    report_progress(message, tag="bench-dit")


def build(name: str, backbone: str, device: torch.device, **options):
    from sambench.backbones.sam import SamBackbone
    from sambench.registry import METHODS, load_plugins

    load_plugins()
    text = {"allow_random_init": True, **({"tiny": BERT_BASE} if backbone == "sam_vit_b" else {})}
    sam = SamBackbone(**BACKBONES[backbone])
    return METHODS.get(name)(sam=sam, text_encoder=text, **options).to(device).eval()


def referring_batch(image: np.ndarray) -> Batch:
    """One sample: ``image`` (H×W×3 uint8), an all-background mask and :data:`EXPRESSION`."""
    return Batch([Sample(index=0, image=image, masks=torch.zeros(1, *image.shape[:2], dtype=torch.bool), texts=[EXPRESSION])])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="sam_vit_b")
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed rounds (each calls every model once; median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    models = {}
    for label, name, options in MODELS:
        progress(f"{label}: building on {device}")
        torch.manual_seed(0)
        models[label] = build(name, args.backbone, device, **options)
    batch = referring_batch(image)
    times: dict[str, list[float]] = {label: [] for label in models}
    with torch.inference_mode():
        for round_index in range(args.repeats + 2):  # interleaved rounds: drift hits every model alike
            progress(f"round {round_index + 1}/{args.repeats + 2}" + (" (warm-up)" if round_index < 2 else ""))
            for label, model in models.items():
                elapsed = timed_ms(lambda: model.predict(batch), device)
                if round_index >= 2:
                    times[label].append(elapsed)
    rows, medians = [], {}
    for label, values in times.items():
        medians[label] = statistics.median(values)
        rows.append([label, f"{medians[label]:.1f}", f"{min(values):.1f}", f"{max(values):.1f}"])
    dit, text = medians["dit_layerwise (global attention)"], medians["sam_text (global attention)"]
    overhead = (dit / text - 1) * 100
    print(f"## DIT inference per image ({args.backbone}, 512², batch 1, {device}, {args.repeats} interleaved rounds)\n")
    print(markdown_table(["model", "median ms", "min ms", "max ms"], rows))
    verdict = "PASS" if overhead <= OVERHEAD_TARGET else "MISS"
    print(f"\nL-DIT overhead over sam_text: {overhead:+.1f} % (target ≤ {OVERHEAD_TARGET:.0f} %: {verdict}); "
          "paper (GPU): 123 ms vs 120-123 ms")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
