"""PerSAM's changes to SAM's two-way transformer, through the wrapper's ``transformer_fn`` hook.

Reproduces the official code's modified ``TwoWayTransformer`` exactly, quirks included:
- target-semantic prompting: ``t`` (1×1×256) is added to the query tokens before each block; in
  the official code the first in-place add also changes the query positional encoding (the
  two are the same tensor), so ``query_pe = tokens + t`` everywhere, block 0 sees ``tokens + t``,
  block i > 0 sees ``out_{i-1} + t`` and the final attention uses ``q = out + (tokens + t) + t``;
- target-guided attention: in the token→image cross-attention of the blocks (not the final
  attention) ``attn = softmax(alpha · attn_sim + softmax(q·kᵀ/√d))`` — a second softmax over
  probabilities plus guidance (alpha = 1 in the official code).
Upstream modules and weights are reused; nothing of SAM is copied.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer


def guided_attention(attn: Attention, q, k, v, attn_sim: torch.Tensor | None, alpha: float = 1.0):
    """``Attention.forward`` with PerSAM's second softmax over ``probabilities + alpha·attn_sim``.

    attn_sim: 1×1×1×(h·w) guidance, broadcast over batch, heads and query tokens.
    """
    q, k, v = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
    q = attn._separate_heads(q, attn.num_heads)
    k = attn._separate_heads(k, attn.num_heads)
    v = attn._separate_heads(v, attn.num_heads)
    logits = q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    probs = torch.softmax(logits, dim=-1)
    if attn_sim is not None:
        probs = torch.softmax(probs + alpha * attn_sim, dim=-1)
    return attn.out_proj(attn._recombine_heads(probs @ v))


def guided_block(block: TwoWayAttentionBlock, queries, keys, query_pe, key_pe, attn_sim, alpha):
    """``TwoWayAttentionBlock.forward`` with guided token→image attention."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    q, k = queries + query_pe, keys + key_pe
    queries = block.norm2(queries + guided_attention(block.cross_attn_token_to_image, q, k, keys, attn_sim, alpha))
    queries = block.norm3(queries + block.mlp(queries))
    q, k = queries + query_pe, keys + key_pe
    keys = block.norm4(keys + block.cross_attn_image_to_token(q=k, k=q, v=queries))
    return queries, keys


class PerSAMTransformer:
    """A ``transformer_fn`` for :meth:`SamBackbone.decode` carrying PerSAM's two signals.

    Args:
        target_embedding: 1×1×256 (or 1×256) mean reference feature ``t``, or None.
        attn_sim: 1×1×1×4096 guidance (sigmoid of the z-scored similarity at 64×64), or None.
        alpha: guidance weight (the official code has none, i.e. 1).
    """

    def __init__(self, target_embedding: torch.Tensor | None = None, attn_sim: torch.Tensor | None = None,
                 alpha: float = 1.0):
        self.t = None if target_embedding is None else target_embedding.reshape(1, 1, -1)
        self.attn_sim, self.alpha = attn_sim, alpha

    def __call__(self, transformer: TwoWayTransformer, src, pos_src, tokens):
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = pos_src.flatten(2).permute(0, 2, 1)
        query_pe = tokens if self.t is None else tokens + self.t  # aliased with block-0's queries
        queries = query_pe
        for index, layer in enumerate(transformer.layers):
            if index > 0 and self.t is not None:
                queries = queries + self.t
            queries, keys = guided_block(layer, queries, keys, query_pe, key_pe, self.attn_sim, self.alpha)
        q = queries + query_pe if self.t is None else queries + query_pe + self.t
        k = keys + key_pe
        queries = transformer.norm_final_attn(queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
