"""CLIP2SAM's label token: an extra decoder output token in the IoU token's place, whose output
goes through MLP(256 -> 256 -> D, 3 layers) into the CLIP text-embedding space.

How it enters the class embedding (``mode``):
- ``zero`` (official code): region embedding + 0 · label embedding (the token only keeps the
  graph connected; classification comes from the RoI branch);
- ``add`` (the paper's description): region embedding + label embedding;
- ``only`` (the paper's "Cls Token" ablation, Table 7): the label embedding alone.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

LABEL_MODES = ("zero", "add", "only")


class LabelToken(nn.Module):
    """Args: dim: decoder width (256); embed_dim: CLIP embedding width (RN50x16: 768); mode: see above."""

    def __init__(self, dim: int = 256, embed_dim: int = 768, mode: str = "zero"):
        super().__init__()
        if mode not in LABEL_MODES:
            raise ValueError(f"unknown label-token mode '{mode}'; valid: {', '.join(LABEL_MODES)}")
        self.mode = mode
        self.token = nn.Embedding(1, dim)
        self.mlp = MLP(dim, dim, embed_dim, 3)

    def class_embedding(self, token_out: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
        """token_out N×dim (decoder output), region N×D (RoI branch; None for ``only``) -> N×D."""
        label = self.mlp(token_out)
        if self.mode == "only":
            return label
        return region + (label * 0.0 if self.mode == "zero" else label)
