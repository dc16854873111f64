"""SAM 2's mask decoder with its two-way transformer call replaceable, re-composed from the
upstream ``sam2.modeling.sam.mask_decoder.MaskDecoder`` submodules (nothing copied, weights
shared). With ``default_transformer_fn`` it computes what ``MaskDecoder.forward`` computes, bit
for bit (tested); the upstream forward is used directly whenever nothing is replaced.

Output tokens are [obj_score_token (SAM 2.x has it), iou_token, mask_tokens...] + the prompt
tokens; the stride-4/8 feature levels (already projected by ``conv_s0`` / ``conv_s1`` at
encoding time) are added inside ``output_upscaling`` as upstream does.
"""

from __future__ import annotations

import torch

from sambench.backbones.interface import TransformerFn
from sambench.backbones.sam_extensions import default_transformer_fn


def _leading_tokens(decoder) -> list[torch.Tensor]:
    """The object-score token (1×C) when the decoder predicts object scores, else nothing."""
    return [decoder.obj_score_token.weight] if decoder.pred_obj_scores else []


def _two_way_decode(decoder, output_tokens: torch.Tensor, first_mask: int, num_masks: int,
                    image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                    dense: torch.Tensor, high_res_features: list[torch.Tensor] | None,
                    transformer_fn: TransformerFn) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of ``MaskDecoder.predict_masks``: output tokens T_out×C, the mask tokens at
    ``first_mask`` … ``first_mask + num_masks - 1`` -> (token outputs N×T×C, masks N×num_masks×4h×4w).

    image_embeddings 1×C×h×w (shared by the N prompt sets, upstream ``repeat_image``) or N×C×h×w;
    high_res_features [s0 1|N×C/8×4h×4w, s1 1|N×C/4×2h×2w] (broadcast like upstream) or None.
    """
    n = sparse.size(0)
    if image_embeddings.shape[0] not in (1, n):
        raise ValueError(f"image features of batch {image_embeddings.shape[0]} for {n} prompt sets: expected 1 or {n}")
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    src = image_embeddings
    if image_embeddings.shape[0] != n:
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
    src = src + dense
    pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
    b, c, h, w = src.shape
    hs, src = transformer_fn(decoder.transformer, src, pos_src, tokens)
    src = src.transpose(1, 2).view(b, c, h, w)
    if not decoder.use_high_res_features:
        upscaled = decoder.output_upscaling(src)
    else:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, first_mask + i, :]) for i in range(num_masks)],
                           dim=1)
    b, c, h, w = upscaled.shape
    return hs, (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)


def run_sam2_mask_decoder(decoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                          dense: torch.Tensor, multimask_output: bool, high_res_features: list[torch.Tensor] | None,
                          transformer_fn: TransformerFn = default_transformer_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward`` (masks and IoU; the object score and SAM tokens are dropped as
    ``SAM2ImagePredictor`` drops them) with the transformer call replaceable.

    Returns low-res logits N×M×4h×4w and IoU N×M: M = 3 with ``multimask_output``; else 1, the
    single-mask token's, or (``dynamic_multimask_via_stability``, eval mode only) the best
    multimask output when the single mask is unstable, exactly as upstream.
    """
    leading = _leading_tokens(decoder)
    s = len(leading)
    output_tokens = torch.cat([*leading, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    hs, masks = _two_way_decode(decoder, output_tokens, s + 1, decoder.num_mask_tokens, image_embeddings, image_pe,
                                sparse, dense, high_res_features, transformer_fn)
    iou_pred = decoder.iou_prediction_head(hs[:, s, :])
    if multimask_output:
        return masks[:, 1:, :, :], iou_pred[:, 1:]
    if decoder.dynamic_multimask_via_stability and not decoder.training:
        return decoder._dynamic_multimask_via_stability(masks, iou_pred)
    return masks[:, 0:1, :, :], iou_pred[:, 0:1]


def run_sam2_single_mask_decoder(decoder, token: torch.Tensor, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                                 sparse: torch.Tensor, dense: torch.Tensor,
                                 high_res_features: list[torch.Tensor] | None,
                                 transformer_fn: TransformerFn = default_transformer_fn
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder with ``token`` (1×C) in the IoU token's place and only the first mask token:
    output tokens [obj_score_token (if any), token, mask_tokens[0]] + prompts.

    Returns low-res logits N×1×4h×4w (no dynamic fallback: there are no multimask tokens) and
    the token's transformer output N×C.
    """
    leading = _leading_tokens(decoder)
    s = len(leading)
    output_tokens = torch.cat([*leading, token, decoder.mask_tokens.weight[:1]], dim=0)
    hs, masks = _two_way_decode(decoder, output_tokens, s + 1, 1, image_embeddings, image_pe, sparse, dense,
                                high_res_features, transformer_fn)
    return masks, hs[:, s, :]
