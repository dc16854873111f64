"""DIT's deep instruction tuning: text tokens projected into every block of SAM's ViT.

The text slots of the sequence are refilled before each block ``i`` by a zero-initialised
``Linear(C, C)`` (+ dropout), so an untrained model carries zeros there and starts as SAM:

- ``e2e`` (E-DIT): block 0 gets ``proj_0(text)``, block ``i > 0`` gets ``proj_i`` of the text tokens
  block ``i-1`` produced;
- ``layerwise`` (L-DIT): every block ``i`` gets ``proj_i(text)`` of the original text features.

When the text width differs from the ViT's (ViT-H: 768 vs 1280; the tiny preset), one extra
``Linear(D, C)`` with default initialisation maps the text first (official ViT-H ``prob_text``).
After the last block the text slots are dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from sambench.backbones.joint_attention import joint_block
from sambench.backbones.interface import BlockFn
from sambench.errors import ConfigError

MODES = ("e2e", "layerwise")
ATTENTION = ("global", "windowed")


class TextInjection(nn.Module):
    """Per-block text projections and the ViT ``block_fn`` that uses them.

    Args:
        mode: ``e2e`` or ``layerwise``.
        depth: number of ViT blocks; text_dim: D of the text features; vision_dim: C of the ViT.
        dropout: after each projection (official 0.1).
    """

    def __init__(self, *, mode: str, depth: int, text_dim: int, vision_dim: int, dropout: float = 0.1):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown injection mode '{mode}'; valid: {', '.join(MODES)}")
        self.mode = mode
        self.text_to_vision = nn.Linear(text_dim, vision_dim) if text_dim != vision_dim else None
        self.projections = nn.ModuleList(nn.Linear(vision_dim, vision_dim) for _ in range(depth))
        for layer in self.projections:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.dropout = nn.Dropout(dropout)

    def block_fn(self, text: torch.Tensor, text_mask: torch.Tensor | None, attention: str = "global") -> BlockFn:
        """A ``block_fn`` for the backbone's ``encode`` that runs each block over [text ; image].

        Args:
            text: B×T×D text features; text_mask: B×T bool (True = real) to mask padded keys,
                or None (official: padding is not masked inside the ViT).
        """
        base = self.text_to_vision(text) if self.text_to_vision is not None else text
        text_out: dict[int, torch.Tensor] = {}  # per block: activation checkpointing re-runs block i later

        def run_block(index: int, block: nn.Module, image: torch.Tensor) -> torch.Tensor:
            source = base if self.mode == "layerwise" or index == 0 else text_out[index - 1]
            tokens = self.dropout(self.projections[index](source))
            text_out[index], image = joint_block(block, tokens, image, text_mask, attention)
            return image

        return run_block
