"""SAM 2's image encoding re-composed from the upstream ``sam2`` submodules, without copying them,
with each Hiera block call replaceable (activation checkpointing).

:func:`run_sam2_forward_image` computes what ``SAM2Base.forward_image`` computes (Hiera trunk,
FPN neck, ``scalp``, the decoder's ``conv_s0`` / ``conv_s1`` on the two finest levels); with no
``block_fn`` it equals it bit for bit (tested). Only torch is imported here.
"""

from __future__ import annotations

import torch

from sambench.backbones.interface import BlockFn


def run_hiera_trunk(trunk, x: torch.Tensor, block_fn: BlockFn | None = None) -> list[torch.Tensor]:
    """``Hiera.forward`` with each block call replaceable: B×3×S×S -> the stage outputs
    B×C_i×h_i×w_i (finest first; the last stage only without ``return_interm_layers``)."""
    x = trunk.patch_embed(x)
    x = x + trunk._get_pos_embed(x.shape[1:3])  # B×h×w×C
    outputs = []
    for index, block in enumerate(trunk.blocks):
        x = block(x) if block_fn is None else block_fn(index, block, x)
        if index == trunk.stage_ends[-1] or (index in trunk.stage_ends and trunk.return_interm_layers):
            outputs.append(x.permute(0, 3, 1, 2))
    return outputs


def run_sam2_forward_image(model, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> dict:
    """``SAM2Base.forward_image`` (``ImageEncoder.forward`` inside) with the Hiera block calls
    replaceable -> {"vision_features", "vision_pos_enc", "backbone_fpn"} as upstream."""
    encoder = model.image_encoder
    features, pos = encoder.neck(run_hiera_trunk(encoder.trunk, pixels, block_fn))
    if encoder.scalp > 0:
        features, pos = features[: -encoder.scalp], pos[: -encoder.scalp]
    out = {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}
    if model.use_high_res_features_in_sam:
        out["backbone_fpn"][0] = model.sam_mask_decoder.conv_s0(out["backbone_fpn"][0])
        out["backbone_fpn"][1] = model.sam_mask_decoder.conv_s1(out["backbone_fpn"][1])
    return out
