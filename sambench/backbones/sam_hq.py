"""HQ-SAM (SysCV ``segment_anything_hq``) behind the backbone interface.

HQ-SAM is SAM v1 plus an HQ output token: its decoder fuses an early ViT feature (the first
global-attention block's output; TinyViT's second stage for Light HQ-SAM) with the embedding and
adds the HQ token's mask to SAM's. Everything else (prompt encoder, pre- and post-processing of
``SamPredictor``) is SAM v1's, so :class:`SamHqBackbone` reuses :class:`SamBackbone`'s members and
replaces building, encoding, decoding and the capabilities. ``segment_anything_hq`` is imported
when a model is built (see :mod:`sambench.backbones.sam_hq_build`), not when this module is.
"""

from __future__ import annotations

import torch

from sambench.backbones import checkpointing
from sambench.backbones.interface import (EXTRA_OUTPUT_TOKENS, HIGH_RES_FEATURES, TOKEN_INJECTION,
                                          TWO_WAY_TRANSFORMER_FN, VIT_ENCODER, BlockFn, EncoderSpec, ImageFeatures,
                                          TransformerFn)
from sambench.backbones.registry import BACKBONES
from sambench.backbones.sam import SamBackbone
from sambench.backbones.sam_extensions import default_transformer_fn
from sambench.backbones.sam_hq_build import HQ_PARTS, build_sam_hq_model
from sambench.backbones.sam_hq_extensions import run_hq_image_encoder, run_hq_mask_decoder, run_tiny_vit_encoder
from sambench.errors import ConfigError

#: the ``ImageFeatures.levels`` entry HQ-SAM's decoder needs: B×width×h×w, upstream's
#: ``interm_embeddings[0]`` (B×h×w×width) channels first, the layout its convolution consumes
VIT_EARLY = "vit_early"
#: the Light HQ-SAM variant: a TinyViT encoder (no plain ViT blocks)
TINY_VIT = "vit_tiny"


@BACKBONES.register_module(name="sam_hq")
class SamHqBackbone(SamBackbone):
    """HQ-SAM (image encoder, prompt encoder, HQ mask decoder) behind the backbone interface.

    ``encode_features`` returns the embedding B×256×64×64 and ``levels["vit_early"]``
    B×width×64×64 (upstream's ``interm_embeddings[0]``, channels first); ``decode`` needs both (a bare
    embedding tensor is refused), ``decode_with_output_token`` only the embedding.

    Multimask output differs from upstream on purpose: upstream ``MaskDecoderHQ`` returns ONE mask
    for ``multimask_output=True`` (the max-IoU of SAM's three multimask outputs, plus the HQ mask).
    Here ``decode(multimask_output=True)`` returns all three (each SAM multimask output + the HQ
    mask; with ``hq_token_only`` the HQ mask alone, three times) with IoU N×3, so methods that
    weigh the three masks (PerSAM-F) work; taking the max-IoU one reproduces upstream exactly.
    Single-mask output equals upstream's.

    Args:
        name: config name (``sam_hq_vit_b``, ``sam_hq_tiny``, ...), part of the cache key.
        variant: ``vit_b`` | ``vit_l`` | ``vit_h`` | ``vit_tiny`` (Light HQ-SAM, TinyViT) | ``tiny``.
        checkpoint: local path of the official HQ-SAM weights (``weights_only`` load, strict keys).
        allow_random_init: build an official variant without weights (speed benchmarks only).
        hq_token_only: masks from the HQ token alone (upstream predictor's option; default False:
            SAM's mask + the HQ mask).
        cache_dir: embedding cache folder; None disables the cache.
        encoder_*: tiny preset sizes; ignored by the official variants.
        init_seed: seed of the tiny preset's random initialisation.
    """

    CAPABILITIES = frozenset({TOKEN_INJECTION, EXTRA_OUTPUT_TOKENS, TWO_WAY_TRANSFORMER_FN, VIT_ENCODER,
                              HIGH_RES_FEATURES})
    FAMILY = "sam_hq"  # not SAM v1, although a subclass: the authors' DIT / OV-SAM files do not fit it

    def __init__(
        self,
        *,
        name: str,
        variant: str,
        checkpoint: str | None = None,
        allow_random_init: bool = False,
        hq_token_only: bool = False,
        cache_dir: str | None = None,
        encoder_embed_dim: int | None = None,
        encoder_depth: int | None = None,
        encoder_num_heads: int | None = None,
        encoder_global_attn_indexes: list[int] | None = None,
        init_seed: int = 0,
    ):
        super().__init__(name=name, variant=variant, checkpoint=checkpoint, allow_random_init=allow_random_init,
                         cache_dir=cache_dir, encoder_embed_dim=encoder_embed_dim, encoder_depth=encoder_depth,
                         encoder_num_heads=encoder_num_heads, encoder_global_attn_indexes=encoder_global_attn_indexes,
                         init_seed=init_seed)
        self.hq_token_only = bool(hq_token_only)

    #: the upstream builder: segment_anything_hq's model (HQ decoder; TinyViT for vit_tiny)
    build_model = staticmethod(build_sam_hq_model)

    @classmethod
    def capabilities_for(cls, variant: str | None) -> frozenset[str]:
        """ViT variants: all five; ``vit_tiny`` (TinyViT: no plain ViT blocks) lacks
        ``token_injection`` and ``vit_encoder``."""
        if variant == TINY_VIT:
            return cls.CAPABILITIES - {TOKEN_INJECTION, VIT_ENCODER}
        return cls.CAPABILITIES

    # ----- sizes ------------------------------------------------------------------------------
    def _require_vit(self, what: str) -> None:
        if self.variant == TINY_VIT:
            raise ConfigError(f"HQ-SAM {TINY_VIT} has a TinyViT encoder, not a plain ViT: {what} needs one "
                              f"(use sam_hq_vit_b/l/h or sam_hq_tiny)")

    def encoder_spec(self) -> EncoderSpec:
        """ViT width / depth / heads / grid (sam_hq_tiny: 32 / 2 / 2 / 64); not for vit_tiny."""
        self._require_vit("encoder_spec")
        return super().encoder_spec()

    def encoder_pos_embed(self) -> torch.Tensor:
        """The ViT's absolute position embedding 1×64×64×width; not for vit_tiny."""
        self._require_vit("encoder_pos_embed")
        return super().encoder_pos_embed()

    def set_trainable(self, *, image_encoder: bool = False, prompt_encoder: bool = False, mask_decoder: bool = False,
                      iou_head: bool | None = None, no_mask_embed: bool | None = None,
                      output_token_only: bool = False) -> None:
        """Freeze everything, then let the named parts train (see the interface). The HQ parts
        (``hf_token``, ``hf_mlp``, ``compress_vit_feat``, ``embedding_encoder``,
        ``embedding_maskfeature``) belong to the mask decoder; ``output_token_only`` freezes them
        too (:meth:`decode_with_output_token` never uses them)."""
        super().set_trainable(image_encoder=image_encoder, prompt_encoder=prompt_encoder, mask_decoder=mask_decoder,
                              iou_head=iou_head, no_mask_embed=no_mask_embed, output_token_only=output_token_only)
        if output_token_only:
            decoder = self._raw_sam().mask_decoder
            for part in HQ_PARTS:
                getattr(decoder, part).requires_grad_(False)

    def peft_targets(self) -> dict[str, str]:
        """SAM's targets; ``vit_tiny``'s TinyViT blocks sit in ``layers.<i>.blocks`` (MLP ``fc1``/``fc2``)."""
        targets = super().peft_targets()
        if self.variant == "vit_tiny":
            targets["encoder_attention"] = r"image_encoder\.layers\.\d+\.blocks\.\d+\.attn\.(qkv|proj)"
            targets["encoder_mlp"] = r"image_encoder\.layers\.\d+\.blocks\.\d+\.mlp\.fc[12]"
        return targets

    # ----- images -----------------------------------------------------------------------------
    def encode_features(self, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> ImageFeatures:
        """Differentiable image encoder: B×3×S×S -> embedding B×256×S/16×S/16 and
        ``levels["vit_early"]`` B×width×S/16×S/16 (contiguous).

        ViT variants take S = 1024 or a smaller multiple of 16 (DIT's 512²: the position embedding
        is resized) and a ``block_fn`` replacing each block call; ``vit_tiny`` takes 1024² only
        (TinyViT's early feature is hard-wired to 64×64) and no ``block_fn``. With activation
        checkpointing (while grad is enabled) every ViT or TinyViT block is checkpointed.
        """
        encoder = self._raw_sam().image_encoder
        full = tuple(pixels.shape[-2:]) == (self.image_size, self.image_size)
        if self.variant == TINY_VIT:
            if block_fn is not None:
                self._require_vit("encode(block_fn=...) (token injection)")
            if not full:
                raise ValueError(f"HQ-SAM {TINY_VIT} encodes {self.image_size}² inputs only, got "
                                 f"{tuple(pixels.shape[-2:])}")
        if checkpointing.active(self.activation_checkpointing):
            block_fn = checkpointing.checkpointed(block_fn)
            if self.variant == TINY_VIT:
                embedding, early = run_tiny_vit_encoder(encoder, pixels, block_fn)
                return ImageFeatures(embedding, {VIT_EARLY: early.permute(0, 3, 1, 2).contiguous()})
        if block_fn is None and full:
            embedding, interm = encoder(pixels)
            early = interm[0]
        else:
            embedding, early = run_hq_image_encoder(encoder, pixels, block_fn)
        return ImageFeatures(embedding, {VIT_EARLY: early.permute(0, 3, 1, 2).contiguous()})

    # ----- decoder ----------------------------------------------------------------------------
    def decode(
        self,
        embedding: torch.Tensor | ImageFeatures,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask_output: bool = False,
        transformer_fn: TransformerFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ mask decoder: features of one image (embedding 1×256×h×w, N prompt sets share it) or
        of N images -> low-res logits N×M×4h×4w and IoU N×M (M = 3 with ``multimask_output``, see
        the class docstring; M = 1 equals upstream ``MaskDecoderHQ`` bit for bit).

        Needs :class:`ImageFeatures` with ``levels["vit_early"]`` (a bare embedding is refused)."""
        if not isinstance(embedding, ImageFeatures) or VIT_EARLY not in embedding.levels:
            raise ValueError(
                "HQ-SAM's decoder needs the image's early ViT features: pass the ImageFeatures from "
                f"encode_features / embed_images (levels[{VIT_EARLY!r}]), not a bare embedding tensor "
                "(decode_with_output_token works from an embedding alone)")
        embed = embedding.embedding
        return run_hq_mask_decoder(self._raw_sam().mask_decoder, embed, embedding.levels[VIT_EARLY],
                                   self.image_pe(embed.shape[-2:]), sparse, dense, multimask_output,
                                   self.hq_token_only,
                                   transformer_fn if transformer_fn is not None else default_transformer_fn)
