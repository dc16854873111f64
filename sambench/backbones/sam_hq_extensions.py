"""Extension points into upstream HQ-SAM modules (``segment_anything_hq``), without copying them.

- :func:`run_hq_mask_decoder`: ``MaskDecoderHQ.forward`` re-composed from its submodules with the
  two-way transformer call replaceable (PerSAM, DIT's decoder layers) and all three multimask
  outputs kept (upstream keeps only the best-IoU one);
- :func:`run_hq_image_encoder`: the ViT forward with each block call replaceable (DIT) that still
  collects the early feature the HQ decoder fuses (the first global-attention block's output);
- :func:`run_tiny_vit_encoder`: Light HQ-SAM's TinyViT forward with each block call replaceable
  (activation checkpointing).

With the default callables they compute exactly what the upstream forwards compute (tested).
Only torch is imported here: the upstream package is imported when a model is built.
"""

from __future__ import annotations

import torch
from torch import nn

from sambench.backbones.interface import BlockFn, TransformerFn
from sambench.backbones.sam_extensions import default_transformer_fn, run_image_encoder


def run_hq_image_encoder(encoder: nn.Module, x: torch.Tensor,
                         block_fn: BlockFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """HQ-SAM's ``ImageEncoderViT.forward`` with each block call replaceable.

    Args:
        x: B×3×S×S normalised, padded pixels (S = encoder.img_size, or a smaller multiple of 16:
            the position embedding is resized as in :func:`run_image_encoder`).
    Returns:
        the embedding B×256×S/16×S/16 and the first global-attention block's output
        B×S/16×S/16×width (upstream ``interm_embeddings[0]``, channels last).
    """
    early: list[torch.Tensor] = []

    def collecting(index: int, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = block(x) if block_fn is None else block_fn(index, block, x)
        if block.window_size == 0 and not early:
            early.append(x)
        return x

    embedding = run_image_encoder(encoder, x, collecting)
    if not early:
        raise ValueError("HQ-SAM's image encoder has no global-attention block: no early feature for the HQ decoder")
    return embedding, early[0]


def run_tiny_vit_encoder(encoder: nn.Module, x: torch.Tensor,
                         block_fn: BlockFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Light HQ-SAM's ``TinyViT.forward`` with each block call replaceable (activation
    checkpointing): ``patch_embed``, then every layer's blocks (numbered across layers) and its
    ``downsample``, the second layer's output kept as the early feature, then the neck.

    Args:
        x: B×3×1024×1024 normalised, padded pixels.
    Returns:
        the embedding B×256×64×64 and the early feature B×64×64×C (upstream
        ``interm_embeddings[0]``, channels last).
    """
    x = encoder.patch_embed(x)
    index, early = 0, None
    for number, layer in enumerate(encoder.layers):
        for block in layer.blocks:
            x = block(x) if block_fn is None else block_fn(index, block, x)
            index += 1
        if layer.downsample is not None:
            x = layer.downsample(x)
        if number == 1:
            early = x.view(x.shape[0], 64, 64, -1)
    b, _, c = x.size()
    return encoder.neck(x.view(b, 64, 64, c).permute(0, 3, 1, 2)), early


def hq_features(decoder: nn.Module, image_embeddings: torch.Tensor, vit_early: torch.Tensor) -> torch.Tensor:
    """The HQ feature map of ``MaskDecoderHQ.forward``: embedding B×256×h×w and early feature
    B×width×h×w (channels first) -> B×32×4h×4w.

    The early feature enters its convolution contiguous, whatever its memory layout (a fresh
    encoder output or a cache entry), so decoding does not depend on where features came from.
    Upstream permutes its channels-last feature: the same tensor for the ViT encoders (their
    block output is laid out channels first), a channels-last one for TinyViT (CPU convolutions
    then differ from ours by float rounding, ~1e-7)."""
    return decoder.embedding_encoder(image_embeddings) + decoder.compress_vit_feat(vit_early.contiguous())


def run_hq_mask_decoder(
    decoder: nn.Module,
    image_embeddings: torch.Tensor,
    vit_early: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool,
    hq_token_only: bool,
    transformer_fn: TransformerFn = default_transformer_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoderHQ.forward`` with the transformer call replaceable.

    Args:
        image_embeddings: 1×256×h×w (one image, its N prompt sets share it) or N×256×h×w.
        vit_early: the early ViT feature 1×width×h×w or N×width×h×w (channels first).
        image_pe: 1×256×h×w; sparse N×T×256; dense N×256×h×w.
        multimask_output: False: M = 1, the single-mask token's mask + the HQ mask (as upstream).
            True: M = 3, each of SAM's three multimask outputs + the HQ mask, IoU N×3; upstream
            returns only the max-IoU one of these (``torch.max`` over the three).
        hq_token_only: the HQ mask alone (repeated M times) instead of the sums.
    Returns:
        low-res logits N×M×4h×4w and IoU predictions N×M.
    """
    n = sparse_prompt_embeddings.size(0)
    features = hq_features(decoder, image_embeddings, vit_early)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, decoder.hf_token.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse_prompt_embeddings), dim=1)
    if image_embeddings.shape[0] == 1:
        image_embeddings = torch.repeat_interleave(image_embeddings, n, dim=0)
        features = features.repeat(n, 1, 1, 1)
    src = image_embeddings + dense_prompt_embeddings
    pos_src = torch.repeat_interleave(image_pe, n, dim=0)
    b, c, h, w = src.shape
    hs, src = transformer_fn(decoder.transformer, src, pos_src, tokens)

    sam_tokens = decoder.mask_tokens.weight.shape[0]  # 4: single-mask token + 3 multimask tokens
    upscaled_sam = decoder.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
    upscaled_hq = decoder.embedding_maskfeature(upscaled_sam) + features
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(sam_tokens)]
                           + [decoder.hf_mlp(hs[:, 1 + sam_tokens, :])], dim=1)
    b, c, h, w = upscaled_sam.shape
    masks_sam = (hyper_in[:, :sam_tokens] @ upscaled_sam.view(b, c, h * w)).view(b, -1, h, w)
    mask_hq = (hyper_in[:, sam_tokens:] @ upscaled_hq.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])

    keep = slice(1, sam_tokens) if multimask_output else slice(0, 1)
    masks_sam, iou_pred = masks_sam[:, keep], iou_pred[:, keep]
    masks = mask_hq.repeat(1, masks_sam.shape[1], 1, 1) if hq_token_only else masks_sam + mask_hq
    return masks, iou_pred
