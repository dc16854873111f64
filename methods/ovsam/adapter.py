"""The SAM2CLIP adapter: frozen CLIP stage maps -> a SAM-like 256×64×64 image embedding.

Per stage a patch embedding to stride 16 and ``dim`` channels (Conv k = s = 4 / 2 / 1 for strides
4 / 8 / 16, ConvTranspose k = s = 2 for stride 32; with bias, no norm), plus a learnt level
embedding; the four levels are summed, SAM's absolute position embedding is added (a buffer,
copied from SAM ViT-H by :meth:`copy_pos_embed`), then upstream ``segment_anything`` ViT blocks
(windowed 14 except the last, global; relative positions) and a SAM-style neck
(Conv1×1 → LayerNorm2d → Conv3×3 → LayerNorm2d). ViT-H sizes (dim 1280, 16 heads, 5 blocks) by
default; the methods size it from their SAM (:func:`teacher_sizes`: width and heads of its ViT),
so a tiny SAM gets a tiny adapter. Distilled with MSE against SAM ViT-H's embeddings (stage 1 of
Open-Vocabulary SAM).

Other backbones (our extension): a teacher that is no plain ViT (SAM 2.1's Hiera, HQ-SAM's
TinyViT) gives no width or position embedding to copy, so the adapter is sized by the method's
``dim`` / ``num_heads`` and its position embedding stays zero (the blocks' relative positions
remain); a backbone whose decoder needs extra feature levels (SAM 2.1's stride-4/8 maps) gets
one head per level (ConvTranspose k = s = 16 / stride from the embedding), distilled alongside it.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import Block
from torch import nn

from sambench.backbones.interface import ImageFeatures

STRIDES = (4, 8, 16, 32)


def teacher_sizes(spec) -> dict[str, int]:
    """``dim`` / ``num_heads`` / ``grid`` of a SAM ViT from its backbone's
    :class:`~sambench.backbones.interface.EncoderSpec` (ViT-H: 1280 / 16 / 64; sam_tiny: 32 / 2 / 64)."""
    return {"dim": spec.width, "num_heads": spec.num_heads, "grid": spec.grid}


def patch_embedding(in_channels: int, dim: int, stride: int) -> nn.Module:
    """A stage map at ``stride`` -> ``dim`` channels at stride 16."""
    if stride <= 16:
        factor = 16 // stride
        return nn.Conv2d(in_channels, dim, kernel_size=factor, stride=factor)
    factor = stride // 16
    return nn.ConvTranspose2d(in_channels, dim, kernel_size=factor, stride=factor)


class Sam2ClipAdapter(nn.Module):
    """Args:
        in_channels: channels of the four CLIP stages (RN50x16: 384, 768, 1536, 3072).
        dim / num_heads / depth: transformer sizes (ViT-H: 1280 / 16 / 5).
        grid: embedding grid (64 for a 1024² input); window: window size of all but the last block.
        out_channels: embedding channels (SAM: 256).
        levels: extra feature levels to predict, name -> (channels, stride) (SAM 2.1's
            ``token_decoder_levels``); none for SAM v1 (the official adapter).
    """

    def __init__(self, *, in_channels: tuple[int, ...] = (384, 768, 1536, 3072), dim: int = 1280, num_heads: int = 16,
                 depth: int = 5, grid: int = 64, window: int = 14, out_channels: int = 256,
                 levels: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        self.patch_embeds = nn.ModuleList(patch_embedding(c, dim, s) for c, s in zip(in_channels, STRIDES))
        self.level_embedding = nn.Embedding(len(in_channels), dim)
        self.register_buffer("pos_embed", torch.zeros(1, grid, grid, dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim=dim, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm, act_layer=nn.GELU,
                  use_rel_pos=True, window_size=0 if i == depth - 1 else window,
                  input_size=(grid, grid) if i == depth - 1 else (window, window))
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_channels, kernel_size=1, bias=False), LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False), LayerNorm2d(out_channels),
        )
        if levels:  # absent (not empty) for SAM v1, so the state dict keeps the official keys
            self.level_heads = nn.ModuleDict({
                name: nn.ConvTranspose2d(out_channels, channels, kernel_size=16 // stride, stride=16 // stride)
                for name, (channels, stride) in levels.items()})

    @torch.no_grad()
    def copy_pos_embed(self, pos_embed: torch.Tensor) -> None:
        """Take SAM's absolute position embedding (1×64×64×dim, ``backbone.encoder_pos_embed()``; not trained here)."""
        if pos_embed.shape != self.pos_embed.shape:
            raise ValueError(f"SAM pos_embed {tuple(pos_embed.shape)} does not fit the adapter {tuple(self.pos_embed.shape)}")
        self.pos_embed.copy_(pos_embed)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Four CLIP stage maps (B×C_i×S/s_i×S/s_i) -> B×256×S/16×S/16."""
        x = sum(embed(stage) + self.level_embedding.weight[i].view(1, -1, 1, 1)
                for i, (embed, stage) in enumerate(zip(self.patch_embeds, stages)))
        x = x.permute(0, 2, 3, 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def features(self, stages: list[torch.Tensor]) -> ImageFeatures:
        """Four CLIP stage maps -> the embedding B×256×S/16×S/16 plus each predicted level
        (B×C_l×S/stride×S/stride)."""
        embedding = self(stages)
        heads = getattr(self, "level_heads", {})
        return ImageFeatures(embedding, {name: head(embedding) for name, head in heads.items()})
