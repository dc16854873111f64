"""SAM 2 / SAM 2.1 in image mode behind the backbone interface: the official ``sam2`` package's
``SAM2Base`` (Hiera trunk + FPN neck, prompt encoder, mask decoder with the stride-4/8 skips),
wrapped as ``SAM2ImagePredictor`` uses it.

- Pre-processing = the package's ``SAM2Transforms``: ToTensor, a square ``Resize((1024, 1024))``
  (no aspect-preserving resize, no padding), ImageNet mean/std; ``input_size`` is always 1024².
- ``encode_features`` = ``forward_image`` + ``_prepare_backbone_features`` + ``no_mem_embed``
  added to the stride-16 map (``directly_add_no_mem_embed``): embedding B×256×64×64 and levels
  ``high_res_s0`` B×32×256×256 (stride 4) and ``high_res_s1`` B×64×128×128 (stride 8), already
  projected by the decoder's ``conv_s0`` / ``conv_s1`` as upstream precomputes them. These are
  the predictor's own (permuted) views; ``embed_images`` and the cache return contiguous copies of
  the same values, after which the decoder's convolutions may round differently (≤ 1e-6, tested).
- Prompts: coordinates ``transform_coords(normalize=True)`` (x/w·1024, y/h·1024, float32); a box
  becomes two points labelled 2, 3 placed before the clicks (``SAM2ImagePredictor._predict``).
- ``decode`` takes the :class:`ImageFeatures` (the levels reach the decoder); upstream semantics:
  multimask slicing, and with one mask in eval mode the dynamic fallback to the best multimask
  output when the single mask is unstable (``build_sam2(apply_postprocessing=True)``).
- The object-score head is ignored, as ``SAM2ImagePredictor`` ignores it in image mode (its token
  still takes part in the transformer, as upstream).
- ``postprocess`` = ``SAM2Transforms.postprocess_masks``: bilinear to the original size. Hole filling
  / sprinkle removal (``max_hole_area`` / ``max_sprinkle_area``) is off by default as in the
  predictor; it needs the package's optional CUDA extension ``sam2._C``: without it (pip wheels,
  CPU) upstream catches the failure, warns once per call and leaves the masks unchanged.
- ``decode`` returns the decoder's logits unclamped; :meth:`predict` clamps only the low-res copy
  it returns to ±32, as ``SAM2ImagePredictor`` does (its full-size masks come from unclamped logits).

The upstream ``SAM2Base`` is private: the submodule ``sam2`` (state-dict prefix ``sam2.``);
reference tests and flop counts use :meth:`Sam2Backbone._raw_model`. The package is imported when
a model is built, not when this module is imported (compose-time capability checks).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sambench.backbones import checkpointing
from sambench.backbones.interface import (EXTRA_OUTPUT_TOKENS, HIGH_RES_FEATURES, TWO_WAY_TRANSFORMER_FN, BlockFn,
                                          ImageFeatures, SegmentationBackbone, TransformerFn)
from sambench.backbones.registry import BACKBONES
from sambench.backbones.sam import DroppedImageEncoder
from sambench.backbones.sam2_build import build_sam2_model, import_sam2
from sambench.backbones.sam2_decoder import run_sam2_mask_decoder, run_sam2_single_mask_decoder
from sambench.backbones.sam2_encoder import run_sam2_forward_image
from sambench.backbones.sam_checkpoint import file_sha256, module_sha256
from sambench.cache import EmbeddingCache
from sambench.errors import ConfigError

#: the feature levels of :meth:`Sam2Backbone.encode_features`, highest resolution first
HIGH_RES_LEVELS = ("high_res_s0", "high_res_s1")
#: ``SAM2ImagePredictor._predict`` clamps the low-res logits it returns to ±this
LOW_RES_CLAMP = 32.0


@BACKBONES.register_module(name="sam2")
class Sam2Backbone(SegmentationBackbone):
    """SAM 2 / SAM 2.1 (image mode) behind the backbone interface.

    Args:
        name: config name (``sam2.1_hiera_t``, ``sam2_tiny``, ...), part of the cache key.
        variant: ``sam2.1_hiera_t`` | ``_s`` | ``_b+`` | ``_l``, ``sam2_hiera_t`` … ``_l`` (the
            package's ``configs/sam2.1`` and ``configs/sam2`` files) or ``tiny``.
        checkpoint: local path of the official weights (a dict with ``"model"``; ``weights_only``).
        allow_random_init: build an official variant without weights (speed benchmarks only).
        cache_dir: embedding cache folder; None disables the cache.
        max_hole_area / max_sprinkle_area: ``SAM2Transforms`` mask post-processing (0: off, as
            the predictor's default; needs the optional CUDA extension, see the module docstring).
        trunk_*: tiny preset Hiera sizes (4 stages); ignored by the official variants.
        init_seed: seed of the tiny preset's random initialisation.
    """

    CAPABILITIES = frozenset({TWO_WAY_TRANSFORMER_FN, EXTRA_OUTPUT_TOKENS, HIGH_RES_FEATURES})
    FAMILY = "sam2"
    RAW, RAW_ACCESSOR = "sam2", "_raw_model"
    KEEPS_ASPECT = False  # SAM2Transforms resizes to the 1024² square

    def __init__(
        self,
        *,
        name: str,
        variant: str,
        checkpoint: str | None = None,
        allow_random_init: bool = False,
        cache_dir: str | None = None,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        trunk_embed_dim: int = 16,
        trunk_num_heads: int = 1,
        trunk_stages: list[int] | None = None,
        trunk_global_att_blocks: list[int] | None = None,
        init_seed: int = 0,
    ):
        super().__init__()
        import_sam2()
        from sam2.utils.transforms import SAM2Transforms

        self.name, self.variant, self.checkpoint = name, variant, checkpoint
        self.add_module(self.RAW, build_sam2_model(variant, checkpoint, allow_random_init, trunk_embed_dim, trunk_num_heads,
                                              trunk_stages, trunk_global_att_blocks, init_seed))
        raw = self._raw_model()
        self.image_size = int(raw.image_size)
        with warnings.catch_warnings():  # upstream scripts its resize + normalise; torch calls that deprecated
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            self.transforms = SAM2Transforms(resolution=self.image_size, mask_threshold=0.0,
                                             max_hole_area=max_hole_area, max_sprinkle_area=max_sprinkle_area)
        self.cache = None
        if cache_dir:
            weights = file_sha256(checkpoint) if checkpoint else module_sha256(_encoding_modules(raw))
            self.cache = EmbeddingCache(cache_dir, f"{name}-{weights[:16]}")

    def _raw_model(self):
        """The upstream ``SAM2Base`` (reference tests, flop counts and key maps only)."""
        return self._modules[self.RAW]

    # ----- sizes ------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._raw_model().no_mem_embed.device

    @property
    def embed_dim(self) -> int:
        """Channels of embeddings and prompt / decoder tokens (256)."""
        return self._raw_model().sam_prompt_encoder.embed_dim

    @property
    def mask_threshold(self) -> float:
        """Logit threshold of a foreground pixel (``SAM2ImagePredictor``'s default, 0.0)."""
        return 0.0

    def drop_image_encoder(self, reason: str) -> None:
        """Free the Hiera trunk and FPN neck of a method that never runs them; pre-processing
        still works, running the encoder raises with ``reason``."""
        self._raw_model().image_encoder = DroppedImageEncoder(self.image_size, reason)
        self.cache = None

    def set_trainable(self, *, image_encoder: bool = False, prompt_encoder: bool = False, mask_decoder: bool = False,
                      iou_head: bool | None = None, no_mask_embed: bool | None = None,
                      output_token_only: bool = False) -> None:
        """Freeze everything, then let the named parts train (see the interface).

        ``image_encoder`` covers everything that runs at encoding time and whose output is cached:
        the Hiera trunk and FPN neck, ``no_mem_embed`` and the decoder's ``conv_s0`` / ``conv_s1``
        (upstream parts of the mask decoder, applied in ``forward_image``). The object-score head
        (unused in image mode) and the video modules (memory attention and encoder, object-pointer
        projections, temporal encodings) always stay frozen.
        """
        raw = self._raw_model()
        decoder = raw.sam_mask_decoder
        self.requires_grad_(False)
        _encoding_modules(raw).requires_grad_(image_encoder)
        raw.sam_prompt_encoder.requires_grad_(prompt_encoder)
        for part in _decoding_modules(decoder):
            part.requires_grad_(mask_decoder)
        if iou_head is not None:
            decoder.iou_prediction_head.requires_grad_(iou_head)
        if no_mask_embed is not None:
            raw.sam_prompt_encoder.no_mask_embed.requires_grad_(no_mask_embed)
        if output_token_only:
            for unused in (decoder.iou_token, decoder.iou_prediction_head, *decoder.output_hypernetworks_mlps[1:]):
                unused.requires_grad_(False)

    def peft_parts(self) -> dict[str, str]:
        """``encoder`` = what :meth:`set_trainable` calls the image encoder (Hiera trunk, FPN
        neck, ``no_mem_embed``, the decoder's ``conv_s0`` / ``conv_s1``); ``decoder`` = the rest of
        the mask decoder but the object-score head; the video modules are in no part."""
        return {"encoder": r"image_encoder\..*|no_mem_embed|sam_mask_decoder\.conv_s[01]\..*",
                "prompt_encoder": r"sam_prompt_encoder\..*",
                "decoder": r"sam_mask_decoder\.(?!conv_s[01]\.|pred_obj_score_head\.).*"}

    def peft_targets(self) -> dict[str, str]:
        """Hiera blocks' attention (``qkv``, ``proj``) and MLP layers; the two-way transformer's
        attention projections and MLPs."""
        return {
            "encoder_attention": r"image_encoder\.trunk\.blocks\.\d+\.attn\.(qkv|proj)",
            "encoder_mlp": r"image_encoder\.trunk\.blocks\.\d+\.mlp\.layers\.[01]",
            "decoder_attention": r"sam_mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj)",
            "decoder_mlp": r"sam_mask_decoder\.transformer\.layers\.\d+\.mlp\.layers\.[01]",
        }

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Checkpoint each Hiera block while grad is enabled; the encoder then runs through
        :func:`~sambench.backbones.sam2_encoder.run_sam2_forward_image` (see the interface)."""
        self.activation_checkpointing = bool(enabled)

    def image_encoder_trains(self) -> bool:
        """Whether anything :meth:`encode_features` runs (trunk, neck, ``no_mem_embed``,
        ``conv_s0`` / ``conv_s1``) has a parameter with ``requires_grad``."""
        return any(p.requires_grad for p in _encoding_modules(self._raw_model()).parameters())

    def token_decoder_levels(self) -> dict[str, tuple[int, int]]:
        """``decode_with_output_token`` needs both high-resolution maps (after the decoder's
        ``conv_s0`` / ``conv_s1``): ``high_res_s0`` (32 channels, stride 4), ``high_res_s1`` (64, stride 8)."""
        decoder = self._raw_model().sam_mask_decoder
        return {"high_res_s0": (int(decoder.conv_s0.out_channels), 4), "high_res_s1": (int(decoder.conv_s1.out_channels), 8)}

    # ----- images -----------------------------------------------------------------------------
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(1024, 1024): SAM 2 resizes every image to the full square (no padding)."""
        return self.image_size, self.image_size

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 RGB -> 1×3×1024×1024 (``SAM2Transforms``, as ``SAM2ImagePredictor.set_image``)."""
        return self.transforms(image)[None].to(self.device)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resized B×3×h×w pixels (0–255) -> /255, ImageNet-normalised, zero-padded B×3×1024×1024
        (for methods that resize themselves; SAM 2's own path resizes to the full square)."""
        mean = torch.tensor(self.transforms.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.transforms.std, device=pixels.device).view(1, 3, 1, 1)
        x = (pixels.float() / 255.0 - mean) / std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.image_size - w, 0, self.image_size - h))

    def encode_features(self, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> ImageFeatures:
        """Differentiable image encoder, B×3×1024×1024 -> embedding B×256×64×64 plus levels
        ``high_res_s0`` B×32×256×256 and ``high_res_s1`` B×64×128×128 (``SAM2ImagePredictor.set_image``)."""
        if block_fn is not None:
            raise ConfigError("SAM 2's Hiera encoder has no block hook (block_fn): its blocks are windowed and pooled, "
                              "not plain ViT blocks that accept extra tokens (capability token_injection)")
        raw = self._raw_model()
        if checkpointing.active(self.activation_checkpointing):
            backbone_out = run_sam2_forward_image(raw, pixels, checkpointing.checkpointed(None))
        else:
            backbone_out = raw.forward_image(pixels)
        _, feats, _, sizes = raw._prepare_backbone_features(backbone_out)
        if raw.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + raw.no_mem_embed
        b = pixels.shape[0]
        maps = [feat.permute(1, 2, 0).view(b, -1, *size) for feat, size in zip(feats, sizes)]
        return ImageFeatures(maps[-1], dict(zip(HIGH_RES_LEVELS, maps[:-1])))

    # ----- prompts ----------------------------------------------------------------------------
    def image_pe(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Positional encoding of an h×w embedding grid -> 1×256×h×w (64×64: ``get_dense_pe()``)."""
        return self._raw_model().sam_prompt_encoder.pe_layer(tuple(int(v) for v in grid_hw)).unsqueeze(0)

    def no_mask_embedding(self, n: int, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The prompt encoder's ``no_mask_embed`` broadcast to n×256×h×w (an expanded view)."""
        weight = self._raw_model().sam_prompt_encoder.no_mask_embed.weight
        return weight.reshape(1, -1, 1, 1).expand(n, -1, *grid_hw)

    def scale_coords(self, coords: torch.Tensor, original_size: tuple[int, int], float64: bool = False) -> torch.Tensor:
        """(x, y) …×2 in original pixels -> float32 …×2 in the 1024 frame: x/w·1024, y/h·1024
        (``SAM2Transforms.transform_coords(normalize=True)``). ``float64`` is accepted for the
        interface and changes nothing: ``SAM2ImagePredictor.predict`` scales in float32."""
        return self.transforms.transform_coords(coords.to(self.device, torch.float), normalize=True,
                                                orig_hw=tuple(original_size))

    def encode_prompts(self, original_size: tuple[int, int], points=None, point_labels=None, boxes=None,
                       mask_inputs=None, float64_coords: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in original pixels (points N×P×2 + labels N×P, boxes N×4 xyxy, mask_inputs
        N×1×256×256 logits) -> sparse N×T×256, dense N×256×64×64."""
        if points is not None:
            points = self.scale_coords(points, original_size)
        if boxes is not None:
            boxes = self.scale_boxes(boxes, original_size)
        return self.encode_frame_prompts(points, point_labels, boxes, mask_inputs)

    def encode_frame_prompts(self, points=None, point_labels=None, boxes=None,
                             mask_inputs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the 1024 frame -> sparse N×T×256, dense N×256×64×64. As
        ``SAM2ImagePredictor._predict``: a box becomes two points labelled 2, 3 before the clicks,
        and the prompt encoder gets points only (so it appends its padding point)."""
        device = self.device
        pair = None
        if points is not None:
            pair = (points.to(device, torch.float), point_labels.to(device, torch.int))
        if boxes is not None:
            box_coords = boxes.to(device, torch.float).reshape(-1, 2, 2)
            box_labels = torch.tensor([[2, 3]], dtype=torch.int, device=device).repeat(box_coords.size(0), 1)
            pair = (box_coords, box_labels) if pair is None else (torch.cat([box_coords, pair[0]], dim=1),
                                                                  torch.cat([box_labels, pair[1]], dim=1))
        if mask_inputs is not None:
            mask_inputs = mask_inputs.to(device, torch.float)
        return self._raw_model().sam_prompt_encoder(points=pair, boxes=None, masks=mask_inputs)

    # ----- decoder ----------------------------------------------------------------------------
    def _decoder_inputs(self, features) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None]:
        """(embedding, image_pe, high-res levels) of ``features``; a bare tensor is refused."""
        decoder = self._raw_model().sam_mask_decoder
        if not isinstance(features, ImageFeatures) or (decoder.use_high_res_features
                                                       and any(n not in features.levels for n in HIGH_RES_LEVELS)):
            raise ValueError("SAM 2's mask decoder needs the stride-4/8 feature levels: pass the ImageFeatures from "
                             f"encode_features / embed_images (levels {', '.join(HIGH_RES_LEVELS)}), not a bare embedding")
        high_res = [features.levels[n] for n in HIGH_RES_LEVELS] if decoder.use_high_res_features else None
        embedding = features.embedding
        return embedding, self.image_pe(embedding.shape[-2:]), high_res

    def decode(self, embedding: ImageFeatures, sparse: torch.Tensor, dense: torch.Tensor,
               multimask_output: bool = False,
               transformer_fn: TransformerFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder: features 1×… (shared by the N prompt sets) or N×… -> low-res logits
        N×M×256×256 (unclamped) and IoU N×M. Without ``transformer_fn``: the upstream
        ``sam_mask_decoder`` itself; with it: :func:`run_sam2_mask_decoder` (equal when the
        function is the plain transformer call)."""
        image, image_pe, high_res = self._decoder_inputs(embedding)
        decoder = self._raw_model().sam_mask_decoder
        if transformer_fn is None:
            masks, iou, _, _ = decoder(image_embeddings=image, image_pe=image_pe, sparse_prompt_embeddings=sparse,
                                       dense_prompt_embeddings=dense, multimask_output=multimask_output,
                                       repeat_image=image.shape[0] != sparse.shape[0], high_res_features=high_res)
            return masks, iou
        return run_sam2_mask_decoder(decoder, image, image_pe, sparse, dense, multimask_output, high_res,
                                     transformer_fn)

    def decode_with_output_token(self, embedding: ImageFeatures, token: torch.Tensor, sparse: torch.Tensor,
                                 dense: torch.Tensor,
                                 transformer_fn: TransformerFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder with ``token`` (1×256) in the IoU token's place, output tokens [obj_score_token,
        token, mask_tokens[0]] -> low-res logits N×1×256×256, the token's output N×256."""
        image, image_pe, high_res = self._decoder_inputs(embedding)
        kwargs = {} if transformer_fn is None else {"transformer_fn": transformer_fn}
        return run_sam2_single_mask_decoder(self._raw_model().sam_mask_decoder, token, image, image_pe, sparse,
                                            dense, high_res, **kwargs)

    def postprocess(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits N×M×256×256 -> N×M×H×W (``SAM2Transforms.postprocess_masks``)."""
        return self.transforms.postprocess_masks(low_res, tuple(original_size))

    def predict(self, embedding, original_size, points=None, point_labels=None, boxes=None, mask_inputs=None,
                multimask_output: bool = False, transformer_fn: TransformerFn | None = None,
                float64_coords: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable ``SAM2ImagePredictor.predict(return_logits=True)`` for N prompt sets on
        one image -> logits N×M×H×W, IoU N×M, low-res logits N×M×256×256 clamped to ±32."""
        sparse, dense = self.encode_prompts(original_size, points, point_labels, boxes, mask_inputs)
        low_res, iou = self.decode(embedding, sparse, dense, multimask_output, transformer_fn)
        return self.postprocess(low_res, original_size), iou, low_res.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)


def _encoding_modules(raw) -> nn.Module:
    """Everything that runs in ``encode_features`` (and so is fingerprinted for the cache)."""
    parts = nn.Module()
    parts.image_encoder = raw.image_encoder
    parts.register_parameter("no_mem_embed", raw.no_mem_embed)
    decoder = raw.sam_mask_decoder
    if decoder.use_high_res_features:
        parts.conv_s0, parts.conv_s1 = decoder.conv_s0, decoder.conv_s1
    return parts


def _decoding_modules(decoder) -> list[nn.Module]:
    """The mask decoder's parts that run in ``decode`` (not ``conv_s0``/``conv_s1`` nor the
    object-score head)."""
    skip = {"conv_s0", "conv_s1", "pred_obj_score_head"}
    return [module for name, module in decoder.named_children() if name not in skip]
