"""GPU memory of a training step, estimated: ``python tools/memory_estimate.py [--backbones ...]``.

For ``sam_prompted`` on SAM ViT-B/L/H at 1024² (the ``peft_workload``), each mode (full
fine-tuning, LoRA, frozen encoder) × precision (fp32, bf16 autocast) × activation checkpointing
(off, on), a Markdown table on stdout (progress on stderr): the estimated GiB at batch 1 and the
largest batch that fits a 16 / 24 / 80 GB GPU.

    step ≈ weights (fp32, all) + gradients (fp32, trainable) + AdamW moments (2 × fp32, trainable)
           + activations autograd saves (fixed + batch × per image) + transient

Activations are **counted**, not guessed: every tensor the forward saves for backward
(:mod:`sambench.cli.saved_tensors`), each storage once, weights left out; measured at batch 1
and 2 (per image = the difference; what images share, such as autocast's bf16 weight copies,
is the fixed part). fp32: the whole model on the ``meta`` device (shapes only, exact, seconds).
bf16: real CPU autocast on small encoders of the same width / heads, extrapolated block by block to the
full depth: a 3-block encoder (the first block, a windowed and a global one) with one small mask for
the blocks, a 1-block encoder with the full 1024², 16-instance loss for the rest; the same
extrapolation is checked against the full-depth count in fp32 and printed. Checkpointing (every encoder block, as
``trainer.activation_checkpointing``): a block keeps only its input, and backward rebuilds one
block at a time (its activations are added as a transient). Transient: 2 × the largest tensor
any operation produced (an operator's input and output / gradient alive together). A GPU of
N GB is given 90 % of N GiB (10 % for the CUDA context, allocator caching and fragmentation).
CUDA autocast casts nearly the same operators as CPU autocast; small differences are possible.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import torch

from sambench.cli.bench_report import markdown_table
from sambench.cli.bench_report import progress as report_progress
from sambench.cli.peft_workload import BACKBONES, MAX_INSTANCES, MODES, build_method, synthetic_batch, total_loss
from sambench.cli.saved_tensors import SavedBytes, count_saved

GIB = 2**30
GPUS_GB = (16, 24, 80)
USABLE = 0.9  # share of a GPU's memory a step may use
PRECISIONS = ("fp32", "bf16")
#: bytes per trainable parameter beyond its weight: fp32 gradient + AdamW's two fp32 moments
TRAINABLE_EXTRA_BYTES = 4 + 8


def progress(message: str) -> None:
    report_progress(message, tag="memory-estimate")


def encoder_blocks(method) -> list:
    return list(method.sam._raw_sam().image_encoder.blocks)


def count_step(sam_kwargs: dict, mode: str, device: torch.device, batch_size: int, precision: str = "fp32",
               image_size: int = 1024, instances: int = MAX_INSTANCES) -> tuple[SavedBytes, dict]:
    """What one training step's forward saves, and the parameter counts, at ``batch_size``."""
    from sambench.engine.precision import autocast

    method, params = build_method(sam_kwargs, mode, device)
    batch = synthetic_batch(batch_size, image_size, instances=instances)
    with autocast(device, precision):
        counts, loss = count_saved(lambda: total_loss(method, batch), module=method, blocks=encoder_blocks(method),
                                   keep_graph=False)
    del loss
    return counts, params


def linear_counts(sam_kwargs: dict, mode: str, device: torch.device, precision: str = "fp32",
                  image_size: int = 1024, instances: int = MAX_INSTANCES) -> tuple[SavedBytes, SavedBytes, dict]:
    """(fixed, per image, parameter counts): counts at batch 1 and 2, fitted as fixed + B × per image."""
    one, params = count_step(sam_kwargs, mode, device, 1, precision, image_size, instances)
    two, _ = count_step(sam_kwargs, mode, device, 2, precision, image_size, instances)
    per_image = two.combine(one, 1, -1)
    return one.combine(per_image, 1, -1), per_image, params


def encoder_layout(sam_kwargs: dict) -> dict:
    """Width, heads and which blocks attend globally (window 0), read from the model built on ``meta``."""
    method, _ = build_method(sam_kwargs, "frozen", torch.device("meta"))
    blocks = encoder_blocks(method)
    spec = method.sam.encoder_spec()
    return {"width": spec.width, "heads": spec.num_heads, "global": [b.window_size == 0 for b in blocks]}


def one_block_kwargs(sam_kwargs: dict, layout: dict) -> dict:
    """A SAM whose encoder is one windowed block of the same width / heads (for what is saved outside the blocks)."""
    return dict(three_block_kwargs(sam_kwargs, layout), name=f"{sam_kwargs['name']}_1block", encoder_depth=1,
                encoder_global_attn_indexes=[])


def three_block_kwargs(sam_kwargs: dict, layout: dict) -> dict:
    """A SAM whose encoder has 3 blocks of the same width / heads: the first block (its input
    needs no gradient when the patch embedding is frozen, so it saves less), a windowed and a
    global one."""
    return dict(name=f"{sam_kwargs['name']}_3blocks", variant="tiny", encoder_embed_dim=layout["width"], encoder_depth=3,
                encoder_num_heads=layout["heads"], encoder_global_attn_indexes=[2], allow_random_init=True)


def extrapolate(three_blocks: SavedBytes, layout: dict, outside: SavedBytes | None = None) -> SavedBytes:
    """Counts of the 3-block encoder laid out as the full encoder: block 0 as its block 0 (every
    SAM's first block is windowed), later blocks as its windowed or global one; what is saved
    outside the blocks from ``outside`` (another proxy's counts) when given."""
    kinds = [0 if i == 0 else 2 if is_global else 1 for i, is_global in enumerate(layout["global"])]
    outside = outside or three_blocks
    return SavedBytes(outside.outside, [three_blocks.blocks[k] for k in kinds],
                      [three_blocks.block_inputs[k] for k in kinds], max(three_blocks.largest, outside.largest))


def proxy_counts(sam_kwargs: dict, layout: dict, mode: str, device: torch.device,
                 precision: str) -> tuple[SavedBytes, SavedBytes]:
    """(fixed, per image) of the full model from two small ones (less memory and compute): the
    blocks from the 3-block encoder with one small mask (the decoder's share is then tiny), what is
    saved outside the blocks (patch embedding, neck, decoder, loss at 1024² with 16 instances)
    from the 1-block encoder."""
    blocks_fixed, blocks_per_image, _ = linear_counts(three_block_kwargs(sam_kwargs, layout), mode, device, precision,
                                                      image_size=64, instances=1)
    outside_fixed, outside_per_image, _ = linear_counts(one_block_kwargs(sam_kwargs, layout), mode, device, precision)
    return (extrapolate(blocks_fixed, layout, outside_fixed), extrapolate(blocks_per_image, layout, outside_per_image))


@dataclass
class Estimate:
    """Bytes of one configuration: ``static`` (weights, gradients, moments), saved activations
    ``fixed`` + B × ``per_image``, and ``transient``."""

    static: float
    fixed: float
    per_image: float
    transient: float

    def at(self, batch_size: int) -> float:
        return self.static + self.fixed + batch_size * self.per_image + self.transient

    def max_batch(self, gpu_gb: float) -> int:
        room = USABLE * gpu_gb * GIB - (self.static + self.fixed + self.transient)
        return max(0, math.floor(room / self.per_image)) if self.per_image > 0 else 10**6


def estimate(fixed: SavedBytes, per_image: SavedBytes, params: dict, checkpointing: bool) -> Estimate:
    static = 4 * params["total"] + TRAINABLE_EXTRA_BYTES * params["trainable"]
    transient = 2 * max(fixed.largest, per_image.largest)
    if checkpointing:
        transient += fixed.combine(per_image, 1, 1).recompute()
    return Estimate(static, fixed.kept(checkpointing), per_image.kept(checkpointing), transient)


def measure_backbone(name: str, modes: list[str], precisions: list[str]) -> tuple[list[dict], list[str]]:
    """Rows (one per mode × precision × checkpointing) for backbone ``name``, and check lines."""
    sam_kwargs = BACKBONES[name]
    layout = encoder_layout(sam_kwargs)
    rows, checks = [], []
    meta, cpu = torch.device("meta"), torch.device("cpu")
    for mode in modes:
        progress(f"{name} {mode}: fp32 on meta (full depth)")
        fixed, per_image, params = linear_counts(sam_kwargs, mode, meta)
        counted = {"fp32": (fixed, per_image)}
        proxy = proxy_counts(sam_kwargs, layout, mode, meta, "fp32")
        exact = proxy == (fixed, per_image)
        checks.append(f"{name} {mode}: 1- and 3-block extrapolation vs full-depth count (fp32, meta): "
                      f"{'equal' if exact else 'DIFFERENT'}")
        if "bf16" in precisions:
            progress(f"{name} {mode}: bf16 CPU autocast, 1- and 3-block encoders (real compute)")
            counted["bf16"] = proxy_counts(sam_kwargs, layout, mode, cpu, "bf16")
        for precision in precisions:
            for checkpointing in (False, True):
                est = estimate(*counted[precision], params, checkpointing)
                rows.append({"backbone": name, "mode": mode, "precision": precision, "checkpointing": checkpointing,
                             "trainable": params["trainable"], "total": params["total"], "estimate": est})
    return rows, checks


def table(rows: list[dict]) -> str:
    headers = ["backbone", "mode", "precision", "act. ckpt", "trainable params", "weights+grads+AdamW GiB",
               "activations GiB/image", "est. GiB at batch 1", *[f"max batch {gb} GB" for gb in GPUS_GB]]
    body = []
    for r in rows:
        est = r["estimate"]
        body.append([r["backbone"], MODES[r["mode"]][0], r["precision"], "on" if r["checkpointing"] else "off",
                     f"{r['trainable']:,}", f"{est.static / GIB:.2f}", f"{est.per_image / GIB:.2f}",
                     f"{est.at(1) / GIB:.2f}", *[est.max_batch(gb) for gb in GPUS_GB]])
    return markdown_table(headers, body)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="sam_vit_b,sam_vit_l,sam_vit_h",
                        help=f"comma-separated, of {','.join(BACKBONES)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {','.join(MODES)}")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="fp32 (meta, seconds) and/or bf16 "
                        "(real CPU compute of small encoders: about a minute per mode for ViT-H)")
    args = parser.parse_args(argv)
    chosen = {}
    for key, valid in (("backbones", BACKBONES), ("modes", MODES), ("precisions", PRECISIONS)):
        chosen[key] = [v.strip() for v in getattr(args, key).split(",") if v.strip()]
        unknown = [v for v in chosen[key] if v not in valid]
        if unknown or not chosen[key]:
            parser.error(f"--{key}: unknown {', '.join(unknown) or '(none)'}; valid: {', '.join(valid)}")
    torch.set_grad_enabled(True)
    rows, checks = [], []
    for name in chosen["backbones"]:
        more_rows, more_checks = measure_backbone(name, chosen["modes"], chosen["precisions"])
        rows += more_rows
        checks += more_checks
    print(f"## Estimated GPU memory of a sam_prompted training step at 1024² (AdamW; "
          f"{int(USABLE * 100)} % of each GPU's GiB usable)\n")
    print(table(rows))
    print("\nChecks:\n" + "\n".join(f"- {line}" for line in checks))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
