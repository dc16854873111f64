"""Extension points into upstream SAM modules, without copying them.

Methods change SAM in two places:
- the mask decoder's two-way transformer (PerSAM: target-guided attention and target-semantic
  prompting) -> :func:`run_mask_decoder` with a ``transformer_fn`` replacing the call to
  ``mask_decoder.transformer``; its output tokens (Open-Vocabulary SAM: a label token and one mask
  token) -> :func:`run_single_mask_decoder`;
- the image encoder's blocks (DIT: text tokens concatenated to image tokens in every block) ->
  :func:`run_image_encoder` with a ``block_fn`` replacing each ``block(x)`` call.

Methods reach them only through :class:`~sambench.backbones.sam.SamBackbone` (``encode(block_fn=)``,
``decode(transformer_fn=)``, ``decode_with_output_token``). Both reuse the upstream submodules and weights; with the default callables they compute exactly
what the upstream ``forward`` computes (tested).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder

from sambench.backbones.interface import BlockFn, TransformerFn
from sambench.backbones.joint_attention import resized_pos_embed


def default_transformer_fn(transformer, src, pos_src, tokens):
    return transformer(src, pos_src, tokens)


def _two_way_decode(decoder: MaskDecoder, output_tokens: torch.Tensor, image_embeddings: torch.Tensor,
                    image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor, num_masks: int,
                    transformer_fn: TransformerFn) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of ``MaskDecoder.predict_masks`` for ``output_tokens`` (T_out×256: one leading
    token, then ``num_masks`` mask tokens) -> (transformer token outputs N×T×256, masks
    N×num_masks×4h×4w)."""
    n = sparse.size(0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    if image_embeddings.shape[0] != n:
        image_embeddings = torch.repeat_interleave(image_embeddings, n, dim=0)
    src = image_embeddings + dense
    pos_src = image_pe.expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = transformer_fn(decoder.transformer, src, pos_src, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).view(b, c, h, w))
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in range(num_masks)], dim=1)
    b, c, h, w = upscaled.shape
    return hs, (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)


def run_mask_decoder(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool,
    transformer_fn: TransformerFn = default_transformer_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward`` with the transformer call replaceable.

    Args:
        image_embeddings: 1×256×h×w (one image; its N prompts share it) or N×256×h×w (one
            image per prompt set, e.g. a batch of referring expressions); upstream: 64×64.
        image_pe: 1×256×h×w dense positional encoding.
        sparse_prompt_embeddings: N×T×256; dense_prompt_embeddings: N×256×h×w.
    Returns:
        low-res mask logits N×M×4h×4w and IoU predictions N×M (M = 3 or 1).
    """
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    hs, masks = _two_way_decode(decoder, output_tokens, image_embeddings, image_pe, sparse_prompt_embeddings,
                                dense_prompt_embeddings, decoder.num_mask_tokens, transformer_fn)
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
    keep = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, keep], iou_pred[:, keep]


def run_single_mask_decoder(
    decoder: MaskDecoder,
    first_token: torch.Tensor,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    transformer_fn: TransformerFn = default_transformer_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decoder with only its first mask token and ``first_token`` (1×256) in the IoU
    token's place (Open-Vocabulary SAM's label token): output tokens = [first, mask_0] + prompts.
    With ``first_token = iou_token`` the masks equal the upstream single-mask output's only when
    the decoder has one mask token; in general the other mask tokens are simply absent.

    Returns:
        low-res mask logits N×1×4h×4w and the first token's transformer output N×256.
    """
    output_tokens = torch.cat([first_token, decoder.mask_tokens.weight[:1]], dim=0)
    hs, masks = _two_way_decode(decoder, output_tokens, image_embeddings, image_pe, sparse_prompt_embeddings,
                                dense_prompt_embeddings, 1, transformer_fn)
    return masks, hs[:, 0, :]


def run_image_encoder(encoder: ImageEncoderViT, x: torch.Tensor, block_fn: BlockFn | None = None) -> torch.Tensor:
    """``ImageEncoderViT.forward`` with each block call replaceable.

    Inputs smaller than ``encoder.img_size`` (DIT: 512²) get the absolute position embedding
    resized bicubically to their grid; upstream ``get_rel_pos`` interpolates the relative tables.

    Args:
        x: B×3×S×S normalised, padded pixels (S = encoder.img_size, or smaller).
    Returns:
        B×256×(S/16)×(S/16) image embeddings.
    """
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + resized_pos_embed(encoder.pos_embed, tuple(x.shape[1:3]))
    for index, block in enumerate(encoder.blocks):
        x = block(x) if block_fn is None else block_fn(index, block, x)
    return encoder.neck(x.permute(0, 3, 1, 2))
