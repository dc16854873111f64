"""The one SAM every method uses: upstream ``segment_anything`` modules, wrapped.

Adds what the upstream ``Sam``/``SamPredictor`` lack: a differentiable path (upstream
``Sam.forward`` and ``predict_torch`` are ``no_grad``), batched prompts per image, an on-disk
embedding cache and the extension points of :mod:`sambench.backbones.sam_extensions`; it implements
:class:`~sambench.backbones.interface.SegmentationBackbone`, the only surface methods use.
The upstream ``Sam`` is private: it stays registered as the submodule ``sam`` (so state-dict
keys remain ``sam.image_encoder.*`` etc., ``sam.sam.*`` inside a method), but ``backbone.sam``
raises; official key maps and reference tests use :meth:`SamBackbone._raw_sam`.
Pre- and post-processing are those of ``SamPredictor``: longest side to 1024 (PIL resize of the
uint8 image), normalise, zero-pad to 1024²; masks are upsampled to 1024², cropped to the resized
image and resized to the original size.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from sambench.backbones import checkpointing
from sambench.backbones.interface import (EXTRA_OUTPUT_TOKENS, TOKEN_INJECTION, TWO_WAY_TRANSFORMER_FN, VIT_ENCODER,
                                          BlockFn, EncoderSpec, ImageFeatures, SegmentationBackbone, TransformerFn)
from sambench.backbones.registry import BACKBONES
from sambench.backbones.sam_checkpoint import build_sam_model, file_sha256, module_sha256
from sambench.backbones.sam_extensions import (default_transformer_fn, run_image_encoder, run_mask_decoder,
                                               run_single_mask_decoder)
from sambench.cache import EmbeddingCache


class DroppedImageEncoder(nn.Module):
    """Stands in for a freed image encoder: keeps ``img_size`` (pre-processing), refuses to run."""

    def __init__(self, img_size: int, reason: str):
        super().__init__()
        self.img_size, self.reason = img_size, reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"SAM's image encoder was dropped: {self.reason}")


@BACKBONES.register_module(name="sam")
class SamBackbone(SegmentationBackbone):
    """SAM (image encoder, prompt encoder, mask decoder) behind the backbone interface.

    Args:
        name: config name (``sam_vit_b``, ``sam_tiny``, ...), part of the cache key.
        variant: ``vit_b`` | ``vit_l`` | ``vit_h`` | ``tiny``.
        checkpoint: local path of the official SAM weights (``weights_only`` load).
        cache_dir: embedding cache folder; None disables the cache.
        encoder_*: tiny preset sizes; ignored by the official variants.
    """

    CAPABILITIES = frozenset({TOKEN_INJECTION, EXTRA_OUTPUT_TOKENS, TWO_WAY_TRANSFORMER_FN, VIT_ENCODER})
    FAMILY = "sam"
    RAW, RAW_ACCESSOR = "sam", "_raw_sam"

    def __init__(
        self,
        *,
        name: str,
        variant: str,
        checkpoint: str | None = None,
        allow_random_init: bool = False,
        cache_dir: str | None = None,
        encoder_embed_dim: int | None = None,
        encoder_depth: int | None = None,
        encoder_num_heads: int | None = None,
        encoder_global_attn_indexes: list[int] | None = None,
        init_seed: int = 0,
    ):
        super().__init__()
        self.name, self.variant = name, variant
        self.add_module(self.RAW, self.build_model(
            variant, checkpoint, allow_random_init, encoder_embed_dim, encoder_depth,
            encoder_num_heads, encoder_global_attn_indexes, init_seed,
        ))
        raw = self._raw_sam()
        self.image_size = raw.image_encoder.img_size
        self.transform = ResizeLongestSide(self.image_size)
        self.checkpoint = checkpoint
        self.cache = None
        if cache_dir:
            weights = file_sha256(checkpoint) if checkpoint else module_sha256(raw.image_encoder)
            self.cache = EmbeddingCache(cache_dir, f"{name}-{weights[:16]}")

    #: builds the upstream model: (variant, checkpoint, allow_random_init, encoder sizes…, init_seed) -> Sam
    build_model = staticmethod(build_sam_model)

    def _raw_sam(self) -> Sam:
        """The upstream ``Sam`` (official key maps, flop counts and reference tests only)."""
        return self._modules[self.RAW]

    # ----- sizes ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._raw_sam().pixel_mean.device

    @property
    def embed_dim(self) -> int:
        """Channels of embeddings and prompt / decoder tokens (256)."""
        return self._raw_sam().prompt_encoder.embed_dim

    @property
    def mask_threshold(self) -> float:
        """Logit threshold of a foreground pixel (SAM's ``mask_threshold``, 0.0)."""
        return self._raw_sam().mask_threshold

    def encoder_spec(self) -> EncoderSpec:
        """ViT width / depth / heads / grid (ViT-H: 1280 / 32 / 16 / 64; sam_tiny: 32 / 2 / 2 / 64)."""
        encoder = self._raw_sam().image_encoder
        return EncoderSpec(width=int(encoder.patch_embed.proj.out_channels), depth=len(encoder.blocks),
                           num_heads=int(encoder.blocks[0].attn.num_heads), grid=int(encoder.pos_embed.shape[1]))

    def encoder_pos_embed(self) -> torch.Tensor:
        """The ViT's absolute position embedding 1×64×64×width (the parameter itself)."""
        return self._raw_sam().image_encoder.pos_embed

    def drop_image_encoder(self, reason: str) -> None:
        """Free the ViT image encoder of a method that never runs it (Open-Vocabulary SAM's
        CLIP2SAM stage and inference: ViT-H is 637 M parameters); pre-processing still works,
        running the encoder raises with ``reason``."""
        raw = self._raw_sam()
        raw.image_encoder = DroppedImageEncoder(raw.image_encoder.img_size, reason)
        self.cache = None

    def set_trainable(self, *, image_encoder: bool = False, prompt_encoder: bool = False, mask_decoder: bool = False,
                      iou_head: bool | None = None, no_mask_embed: bool | None = None,
                      output_token_only: bool = False) -> None:
        """Freeze everything, then let the named parts train (see the interface)."""
        raw = self._raw_sam()
        self.requires_grad_(False)
        raw.image_encoder.requires_grad_(image_encoder)
        raw.prompt_encoder.requires_grad_(prompt_encoder)
        raw.mask_decoder.requires_grad_(mask_decoder)
        decoder = raw.mask_decoder
        if iou_head is not None:
            decoder.iou_prediction_head.requires_grad_(iou_head)
        if no_mask_embed is not None:
            raw.prompt_encoder.no_mask_embed.requires_grad_(no_mask_embed)
        if output_token_only:
            for unused in (decoder.iou_token, decoder.iou_prediction_head, *decoder.output_hypernetworks_mlps[1:]):
                unused.requires_grad_(False)

    def peft_parts(self) -> dict[str, str]:
        """``encoder`` / ``prompt_encoder`` / ``decoder``: the upstream ``Sam``'s three modules."""
        return {"encoder": r"image_encoder\..*", "prompt_encoder": r"prompt_encoder\..*", "decoder": r"mask_decoder\..*"}

    def peft_targets(self) -> dict[str, str]:
        """The ViT blocks' attention (``qkv``, ``proj``) and MLP (``lin1``, ``lin2``) layers; the
        two-way transformer's attention projections (``q/k/v/out_proj``) and MLPs."""
        return {
            "encoder_attention": r"image_encoder\.blocks\.\d+\.attn\.(qkv|proj)",
            "encoder_mlp": r"image_encoder\.blocks\.\d+\.mlp\.lin[12]",
            "decoder_attention": r"mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj)",
            "decoder_mlp": r"mask_decoder\.transformer\.layers\.\d+\.mlp\.lin[12]",
        }

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Checkpoint each ViT block (around ``block_fn`` when one is given) while grad is
        enabled; the encoder then runs through :func:`run_image_encoder` (see the interface)."""
        self.activation_checkpointing = bool(enabled)

    def image_encoder_trains(self) -> bool:
        """Whether any ViT image-encoder parameter has ``requires_grad``."""
        return any(p.requires_grad for p in self._raw_sam().image_encoder.parameters())

    # ----- images -----------------------------------------------------------------------------
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image after resizing its longest side to 1024."""
        return self.transform.get_preprocess_shape(original_size[0], original_size[1], self.image_size)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 RGB -> 1×3×1024×1024 normalised, zero-padded (as ``SamPredictor.set_image``)."""
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return self._raw_sam().preprocess(pixels)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resized B×3×h×w pixels (0–255) -> normalised, zero-padded B×3×1024×1024 (``Sam.preprocess``)."""
        return self._raw_sam().preprocess(pixels)

    def encode_features(self, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> ImageFeatures:
        """Differentiable image encoder: B×3×S×S (S = 1024, or a smaller multiple of 16: the
        position embedding is resized) -> B×256×S/16×S/16; no extra levels (SAM v1)."""
        encoder = self._raw_sam().image_encoder
        if checkpointing.active(self.activation_checkpointing):
            block_fn = checkpointing.checkpointed(block_fn)
        if block_fn is None and tuple(pixels.shape[-2:]) == (self.image_size, self.image_size):
            return ImageFeatures(encoder(pixels))
        return ImageFeatures(run_image_encoder(encoder, pixels, block_fn))

    # ----- prompts ----------------------------------------------------------------------------
    def image_pe(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Positional encoding of an h×w embedding grid -> 1×256×h×w (64×64: ``get_dense_pe()``)."""
        return self._raw_sam().prompt_encoder.pe_layer(tuple(int(v) for v in grid_hw)).unsqueeze(0)

    def no_mask_embedding(self, n: int, grid_hw: tuple[int, int]) -> torch.Tensor:
        """SAM's ``no_mask_embed`` broadcast to n×256×h×w (an expanded view, differentiable)."""
        weight = self._raw_sam().prompt_encoder.no_mask_embed.weight
        return weight.reshape(1, -1, 1, 1).expand(n, -1, *grid_hw)

    def encode_prompts(
        self,
        original_size: tuple[int, int],
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        float64_coords: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in original pixels (points N×P×2 + labels N×P, boxes N×4 xyxy, mask_inputs
        N×1×256×256 logits) -> sparse N×T×256 and dense N×256×64×64 embeddings.

        Coordinates are scaled by (new_w / w, new_h / h) into the 1024 frame (the prompt encoder
        adds the half-pixel shift). ``float64_coords``: scale in float64, then round to float32,
        as ``SamPredictor.predict`` does (numpy ``apply_coords``); False: in float32, as
        ``predict_torch`` with ``apply_coords_torch``. The two differ by at most one float32 ulp
        (6.1e-5 px at 1024) on some coordinates.
        """
        if points is not None:
            points, point_labels = self.scale_coords(points, original_size, float64_coords), point_labels.to(self.device)
        if boxes is not None:
            boxes = self.scale_coords(boxes.reshape(-1, 2, 2), original_size, float64_coords).reshape(-1, 4)
        return self.encode_frame_prompts(points, point_labels, boxes, mask_inputs)

    def encode_frame_prompts(
        self,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts already in the 1024 frame (points N×P×2 + labels N×P, boxes N×4) -> sparse
        N×T×256, dense N×256×64×64 (the upstream prompt encoder as it is)."""
        point_pair = (points, point_labels) if points is not None else None
        return self._raw_sam().prompt_encoder(points=point_pair, boxes=boxes, masks=mask_inputs)

    def scale_coords(self, coords: torch.Tensor, original_size: tuple[int, int], float64: bool = False) -> torch.Tensor:
        """(x, y) coordinates …×2 in original pixels -> float32 …×2 in the 1024 frame."""
        if not float64:
            return self.transform.apply_coords_torch(coords.to(self.device, torch.float), original_size)
        h, w = original_size
        new_h, new_w = self.input_size(original_size)
        scale = torch.tensor([new_w / w, new_h / h], dtype=torch.float64, device=self.device)
        return (coords.to(self.device, torch.float64) * scale).float()

    # ----- decoder ----------------------------------------------------------------------------
    def decode(
        self,
        embedding: torch.Tensor | ImageFeatures,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask_output: bool = False,
        transformer_fn: TransformerFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder: embedding 1×256×h×w (one image, N prompts) or N×256×h×w (one image per
        prompt set) -> low-res logits N×M×4h×4w and IoU predictions N×M (the upstream forward
        when nothing is replaced, else :func:`run_mask_decoder`, equal to it bit for bit)."""
        embedding = _embedding(embedding)
        decoder = self._raw_sam().mask_decoder
        image_pe = self.image_pe(embedding.shape[-2:])
        if transformer_fn is None and embedding.shape[0] == 1:
            return decoder(embedding, image_pe, sparse, dense, multimask_output)
        return run_mask_decoder(decoder, embedding, image_pe, sparse, dense, multimask_output,
                                transformer_fn if transformer_fn is not None else default_transformer_fn)

    def decode_with_output_token(
        self,
        embedding: torch.Tensor | ImageFeatures,
        token: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        transformer_fn: TransformerFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder with ``token`` (1×256) in the IoU token's place and only the first mask token
        (:func:`run_single_mask_decoder`) -> low-res logits N×1×4h×4w, the token's output N×256."""
        embedding = _embedding(embedding)
        return run_single_mask_decoder(self._raw_sam().mask_decoder, token, embedding,
                                       self.image_pe(embedding.shape[-2:]), sparse, dense,
                                       transformer_fn if transformer_fn is not None else default_transformer_fn)

    def postprocess(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits N×M×256×256 -> logits N×M×H×W at the original size."""
        return self._raw_sam().postprocess_masks(low_res, self.input_size(original_size), original_size)

    def predict(
        self,
        embedding: torch.Tensor | ImageFeatures,
        original_size: tuple[int, int],
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        multimask_output: bool = False,
        transformer_fn: TransformerFn | None = None,
        float64_coords: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable ``SamPredictor.predict_torch`` for N prompts on one image
        (``float64_coords``: prompts scaled as ``SamPredictor.predict``, see :meth:`encode_prompts`).

        Returns: logits N×M×H×W (threshold at ``mask_threshold`` = 0), IoU N×M,
        low-res logits N×M×256×256.
        """
        return super().predict(embedding, original_size, points, point_labels, boxes, mask_inputs,
                               multimask_output, transformer_fn, float64_coords)


def _embedding(features: torch.Tensor | ImageFeatures) -> torch.Tensor:
    return features.embedding if isinstance(features, ImageFeatures) else features
