"""The "Add 2 / 4 decoder layers" baselines: more two-way attention layers in SAM's decoder.

New ``TwoWayAttentionBlock``s (upstream class, SAM ViT-B decoder sizes, random init) run after
the decoder's own two layers and before its final token-to-image attention, through the
decoder's ``transformer_fn`` extension point.
"""

from __future__ import annotations

from segment_anything.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer
from torch import nn


class ExtraDecoderLayers(nn.Module):
    """``num_layers`` extra two-way layers; call it as a ``transformer_fn``."""

    def __init__(self, *, num_layers: int, embedding_dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim=embedding_dim, num_heads=num_heads, mlp_dim=mlp_dim,
                                 attention_downsample_rate=2, skip_first_layer_pe=False)
            for _ in range(num_layers)
        )

    def forward(self, transformer: TwoWayTransformer, src, pos_src, tokens):
        """Upstream ``TwoWayTransformer.forward`` with the extra layers appended.
        src/pos_src N×256×h×w, tokens N×T×256 -> (queries N×T×256, keys N×hw×256)."""
        keys, key_pe = src.flatten(2).permute(0, 2, 1), pos_src.flatten(2).permute(0, 2, 1)
        queries = tokens
        for layer in [*transformer.layers, *self.layers]:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        q, k = queries + tokens, keys + key_pe
        queries = queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys)
        return transformer.norm_final_attn(queries), keys

