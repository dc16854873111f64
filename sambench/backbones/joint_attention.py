"""SAM ViT blocks over a joint sequence [text tokens ; image tokens] (DIT's token injection).

:func:`joint_block` computes an upstream ``segment_anything`` ``Block`` (pre-norm attention with
decomposed relative positions, then the MLP) with extra text tokens in the sequence, reusing the
block's own submodules and weights:

- ``global`` attention (the official DIT encoder): every token attends to every token; the
  relative-position bias only enters the image–image part (its tables are interpolated to the
  image grid by upstream ``get_rel_pos``); text tokens have no position.
- ``windowed`` attention (SAM's own layout, for windowed blocks): image tokens attend within
  their window exactly as upstream (zero padding after the norm, 14×14 windows) plus to all text
  tokens; text tokens attend to all text and image tokens.

With no text tokens both give the upstream ``block(x)`` (tested). ``text_mask`` (B×T, True =
real token) optionally hides padded text keys from every query.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, add_decomposed_rel_pos, window_partition, window_unpartition


def resized_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Absolute position embedding 1×H×W×C -> 1×h×w×C (bicubic; unchanged when sizes match)."""
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1)


def _heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B×N×C -> B×heads×N×(C/heads)."""
    return t.reshape(t.shape[0], t.shape[1], num_heads, t.shape[-1] // num_heads).transpose(1, 2)


def _rel_pos_bias(attn: Attention, q_img: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Decomposed relative-position bias B×heads×hw×hw for image queries q_img B×heads×hw×d."""
    b, heads, n, d = q_img.shape
    zeros = q_img.new_zeros(b * heads, n, n)
    bias = add_decomposed_rel_pos(zeros, q_img.reshape(b * heads, n, d), attn.rel_pos_h, attn.rel_pos_w, hw, hw)
    return bias.view(b, heads, n, n)


def _attend(q, k, v, bias):
    """Scaled dot-product attention (scale 1/√d as upstream) -> B×N×C."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).flatten(2)


def _key_bias(text_mask: torch.Tensor | None, num_keys: int, like: torch.Tensor) -> torch.Tensor | None:
    """Additive key mask B×1×1×K (-inf on padded text keys, which come first) or None."""
    if text_mask is None or text_mask.shape[1] == 0:
        return None
    bias = like.new_zeros(text_mask.shape[0], 1, 1, num_keys)
    bias[:, 0, 0, : text_mask.shape[1]].masked_fill_(~text_mask, float("-inf"))
    return bias


def _global_attention(attn: Attention, x: torch.Tensor, num_text: int, hw: tuple[int, int], text_mask) -> torch.Tensor:
    """x B×(T+hw)×C (normed) -> attention output B×(T+hw)×C."""
    q, k, v = (_heads(t, attn.num_heads) for t in attn.qkv(x).chunk(3, dim=-1))
    bias = _key_bias(text_mask, k.shape[2], q)
    if attn.use_rel_pos:  # image-image block only: pad the bias with zeros for the text rows/columns
        rel = F.pad(_rel_pos_bias(attn, q[:, :, num_text:], hw), (num_text, 0, num_text, 0))
        bias = rel if bias is None else rel + bias
    return attn.proj(_attend(q, k, v, bias))


def _windowed_attention(attn: Attention, text: torch.Tensor, image: torch.Tensor, window: int, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """text B×T×C and image B×h×w×C (both normed) -> attention outputs of the same shapes."""
    b, h, w, c = image.shape
    num_text = text.shape[1]
    qkv_text = attn.qkv(text)
    qkv_img = attn.qkv(image)
    # Upstream pads the normed tokens with zeros before qkv, so padded tokens carry qkv's bias.
    hp, wp = -(-h // window) * window, -(-w // window) * window
    padded = qkv_img.new_zeros(b, hp, wp, qkv_img.shape[-1])
    if attn.qkv.bias is not None:
        padded += attn.qkv.bias.to(qkv_img.dtype)
    padded[:, :h, :w] = qkv_img
    windows, _ = window_partition(padded, window)  # (B·nw)×ws×ws×3C
    nw = windows.shape[0] // b
    q_w, k_w, v_w = (_heads(t, attn.num_heads) for t in windows.flatten(1, 2).chunk(3, dim=-1))
    q_t, k_t, v_t = (_heads(t, attn.num_heads) for t in qkv_text.chunk(3, dim=-1))
    # image queries: [text ; own window] keys
    k_wt = torch.cat([k_t.repeat_interleave(nw, dim=0), k_w], dim=2)
    v_wt = torch.cat([v_t.repeat_interleave(nw, dim=0), v_w], dim=2)
    mask_w = text_mask.repeat_interleave(nw, dim=0) if text_mask is not None else None
    bias_w = _key_bias(mask_w, k_wt.shape[2], q_w)
    if attn.use_rel_pos:
        rel = F.pad(_rel_pos_bias(attn, q_w, (window, window)), (num_text, 0))
        bias_w = rel if bias_w is None else rel + bias_w
    out_w = attn.proj(_attend(q_w, k_wt, v_wt, bias_w)).view(-1, window, window, c)
    out_img = window_unpartition(out_w, window, (hp, wp), (h, w))
    # text queries: all text and (real) image keys
    k_img, v_img = (_heads(t, attn.num_heads) for t in qkv_img.flatten(1, 2).chunk(3, dim=-1)[1:])
    k_all, v_all = torch.cat([k_t, k_img], dim=2), torch.cat([v_t, v_img], dim=2)
    out_text = attn.proj(_attend(q_t, k_all, v_all, _key_bias(text_mask, k_all.shape[2], q_t))) if num_text else text
    return out_text, out_img


def joint_block(
    block: Block, text: torch.Tensor | None, image: torch.Tensor, text_mask: torch.Tensor | None = None,
    attention: str = "global",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One upstream ViT block over [text ; image].

    Args:
        text: B×T×C tokens (or None: image only).
        image: B×h×w×C tokens (position embedding already added).
        text_mask: B×T bool (True = real token) to hide padded text keys, or None.
        attention: ``global`` (official DIT) or ``windowed`` (SAM's windows in its windowed blocks;
            global blocks stay global).
    Returns:
        text B×T×C (None if none came in) and image B×h×w×C after the block.
    """
    b, h, w, c = image.shape
    if text is None:
        text = image.new_zeros(b, 0, c)
        text_mask = None
    num_text = text.shape[1]
    if attention == "windowed" and block.window_size > 0:
        attn_text, attn_img = _windowed_attention(block.attn, block.norm1(text), block.norm1(image), block.window_size, text_mask)
        seq = torch.cat([text, image.reshape(b, h * w, c)], dim=1)
        seq = seq + torch.cat([attn_text, attn_img.reshape(b, h * w, c)], dim=1)
    else:
        seq = torch.cat([text, image.reshape(b, h * w, c)], dim=1)
        seq = seq + _global_attention(block.attn, block.norm1(seq), num_text, (h, w), text_mask)
    seq = seq + block.mlp(block.norm2(seq))
    out_text = seq[:, :num_text] if num_text else None
    return out_text, seq[:, num_text:].reshape(b, h, w, c)
