"""The workload the PEFT cost tools measure (``bench_peft``, ``memory_estimate``, the GPU check):
``sam_prompted`` (GT-box prompts, Dice + BCE) on a random-weight SAM, with its encoder fully
fine-tuned, LoRA-adapted or frozen (``method.peft`` presets ``full`` / ``lora`` / ``none``), one
training step on generated 1024² images with 16 instances each.
"""

from __future__ import annotations

import contextlib

import torch

from sambench.cli.bench_report import SAM_TINY, SAM_VIT_B, SAM_VIT_H

SAM_VIT_L = dict(name="sam_vit_l", variant="vit_l", allow_random_init=True)
BACKBONES = {"sam_vit_b": SAM_VIT_B, "sam_vit_l": SAM_VIT_L, "sam_vit_h": SAM_VIT_H, "sam_tiny": SAM_TINY}
#: mode -> (label, ``conf/method/peft`` preset): what trains besides sam_prompted's mask decoder
MODES = {
    "full": ("full fine-tuning", "full"),          # the encoder trains too; the decoder as sam_prompted trains it
    "lora": ("LoRA r=8 (encoder attention)", "lora"),  # adapters on every block's qkv/proj; decoder trains
    "frozen": ("frozen encoder", "none"),          # sam_prompted's default: the decoder trains
}
MAX_INSTANCES = 16  # sam_prompted's max_train_instances


def build_method(sam_kwargs: dict, mode: str, device: torch.device, *, cache_dir: str | None = None,
                 checkpointing: bool = False):
    """``sam_prompted`` in ``mode`` on ``device`` (``meta``: shapes only, no memory, no compute)
    and its parameter counts {total, trainable}; ``checkpointing`` needs a backbone with
    ``set_activation_checkpointing``."""
    from sambench.backbones.sam import SamBackbone
    from sambench.cli.build import peft_section
    from sambench.peft import PeftSettings, apply_peft
    from sambench.registry import METHODS, load_plugins

    load_plugins()
    torch.manual_seed(0)
    with torch.device("meta") if device.type == "meta" else contextlib.nullcontext():
        sam = SamBackbone(**sam_kwargs, cache_dir=cache_dir)
        method = METHODS.get("sam_prompted")(sam=sam)
        apply_peft(method, PeftSettings.from_dict(peft_section(MODES[mode][1])))
    if checkpointing:
        sam.set_activation_checkpointing(True)
    method.to(device).train()
    params = list(method.parameters())
    counts = {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}
    return method, counts


def synthetic_batch(batch_size: int, image_size: int = 1024, seed: int = 0, instances: int = MAX_INSTANCES):
    """``batch_size`` copies of one generated ``image_size``² image (random pixels) with
    ``instances`` (at most 16) instance masks (rectangles on a 4×4 grid): every image costs the same."""
    import numpy as np

    from sambench.structures import Batch, Sample

    image = np.random.default_rng(seed).integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
    cell = image_size // 4
    masks = torch.zeros(instances, image_size, image_size, dtype=torch.bool)
    for i in range(instances):
        row, col = divmod(i, 4)
        masks[i, row * cell + cell // 8: (row + 1) * cell - cell // 8, col * cell + cell // 8: (col + 1) * cell - cell // 4] = True
    return Batch([Sample(index=i, image=image, masks=masks) for i in range(batch_size)])


def total_loss(method, batch) -> torch.Tensor:
    return sum(method.training_step(batch).values())
