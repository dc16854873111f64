"""The one SAM every method uses: upstream ``segment_anything`` modules, wrapped.

Adds what the upstream ``Sam``/``SamPredictor`` lack: a differentiable path (upstream
``Sam.forward`` and ``predict_torch`` are ``no_grad``), batched prompts per image, an on-disk
embedding cache and the extension points of :mod:`sambench.backbones.sam_extensions`.
Pre- and post-processing are those of ``SamPredictor``: longest side to 1024 (PIL resize of the
uint8 image), normalise, zero-pad to 1024²; masks are upsampled to 1024², cropped to the resized
image and resized to the original size.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn

from sambench.backbones.sam_checkpoint import build_sam_model, file_sha256, module_sha256
from sambench.backbones.sam_extensions import BlockFn, TransformerFn, run_image_encoder, run_mask_decoder
from sambench.cache import EmbeddingCache


class DroppedImageEncoder(nn.Module):
    """Stands in for a freed image encoder: keeps ``img_size`` (pre-processing), refuses to run."""

    def __init__(self, img_size: int, reason: str):
        super().__init__()
        self.img_size, self.reason = img_size, reason

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(f"SAM's image encoder was dropped: {self.reason}")


class SamBackbone(nn.Module):
    """SAM (image encoder, prompt encoder, mask decoder) with sambench's entry points.

    Args:
        name: config name (``sam_vit_b``, ``sam_tiny``, ...), part of the cache key.
        variant: ``vit_b`` | ``vit_l`` | ``vit_h`` | ``tiny``.
        checkpoint: local path of the official SAM weights (``weights_only`` load).
        cache_dir: embedding cache folder; None disables the cache.
        encoder_*: tiny preset sizes; ignored by the official variants.
    """

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
        self.name = name
        self.sam = build_sam_model(
            variant, checkpoint, allow_random_init, encoder_embed_dim, encoder_depth,
            encoder_num_heads, encoder_global_attn_indexes, init_seed,
        )
        self.image_size = self.sam.image_encoder.img_size
        self.transform = ResizeLongestSide(self.image_size)
        self.checkpoint = checkpoint
        self.cache = None
        if cache_dir:
            weights = file_sha256(checkpoint) if checkpoint else module_sha256(self.sam.image_encoder)
            self.cache = EmbeddingCache(cache_dir, f"{name}-{weights[:16]}")

    @property
    def device(self) -> torch.device:
        return self.sam.pixel_mean.device

    # ----- parts: methods reach SAM only through these ----------------------------------------
    @property
    def image_encoder(self) -> nn.Module:
        """SAM's ViT (B×3×1024×1024 -> B×256×64×64); freeze or fine-tune it through this."""
        return self.sam.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        """SAM's prompt encoder (points/boxes/masks -> sparse N×T×256, dense N×256×64×64)."""
        return self.sam.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        """SAM's two-way transformer mask decoder."""
        return self.sam.mask_decoder

    @property
    def mask_threshold(self) -> float:
        """Logit threshold of a foreground pixel (SAM's ``mask_threshold``, 0.0)."""
        return self.sam.mask_threshold

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, 1×256×64×64."""
        return self.sam.prompt_encoder.get_dense_pe()

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resized B×3×h×w pixels (0–255) -> normalised, zero-padded B×3×1024×1024 (``Sam.preprocess``)."""
        return self.sam.preprocess(pixels)

    def drop_image_encoder(self, reason: str) -> None:
        """Free the ViT image encoder of a method that never runs it (Open-Vocabulary SAM's
        CLIP2SAM stage and inference: ViT-H is 637 M parameters); pre-processing still works,
        running the encoder raises with ``reason``."""
        self.sam.image_encoder = DroppedImageEncoder(self.sam.image_encoder.img_size, reason)
        self.cache = None

    # ----- images -----------------------------------------------------------------------------
    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image after resizing its longest side to 1024."""
        return self.transform.get_preprocess_shape(original_size[0], original_size[1], self.image_size)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 RGB -> 1×3×1024×1024 normalised, zero-padded (as ``SamPredictor.set_image``)."""
        resized = self.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        return self.sam.preprocess(pixels)

    def encode(self, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> torch.Tensor:
        """Differentiable image encoder: B×3×1024×1024 -> B×256×64×64."""
        if block_fn is None:
            return self.sam.image_encoder(pixels)
        return run_image_encoder(self.sam.image_encoder, pixels, block_fn)

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray]) -> torch.Tensor:
        """Frozen-encoder embeddings B×256×64×64 (float32), through the cache when enabled."""
        out: list[torch.Tensor | None] = [None] * len(images)
        keys = [EmbeddingCache.image_key(img) for img in images] if self.cache else []
        for i, key in enumerate(keys):
            out[i] = self.cache.get(key)
        missing = [i for i, emb in enumerate(out) if emb is None]
        for i in missing:  # one at a time: ViT-H at 1024² is memory-heavy
            emb = self.encode(self.preprocess(images[i]))[0].float()
            out[i] = emb
            if self.cache:
                self.cache.put(keys[i], emb)
        return torch.stack([emb.to(self.device) for emb in out])

    # ----- prompts and decoder ----------------------------------------------------------------
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
        point_pair = None
        if points is not None:
            point_pair = (self.scale_coords(points, original_size, float64_coords), point_labels.to(self.device))
        if boxes is not None:
            boxes = self.scale_coords(boxes.reshape(-1, 2, 2), original_size, float64_coords).reshape(-1, 4)
        return self.sam.prompt_encoder(points=point_pair, boxes=boxes, masks=mask_inputs)

    def scale_coords(self, coords: torch.Tensor, original_size: tuple[int, int], float64: bool = False) -> torch.Tensor:
        """(x, y) coordinates …×2 in original pixels -> float32 …×2 in the 1024 frame."""
        if not float64:
            return self.transform.apply_coords_torch(coords.to(self.device, torch.float), original_size)
        h, w = original_size
        new_h, new_w = self.input_size(original_size)
        scale = torch.tensor([new_w / w, new_h / h], dtype=torch.float64, device=self.device)
        return (coords.to(self.device, torch.float64) * scale).float()

    def decode(
        self,
        embedding: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask_output: bool = False,
        transformer_fn: TransformerFn | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask decoder for one image: embedding 1×256×64×64, N prompts ->
        low-res logits N×M×256×256 and IoU predictions N×M."""
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        if transformer_fn is None:
            return self.sam.mask_decoder(embedding, image_pe, sparse, dense, multimask_output)
        return run_mask_decoder(
            self.sam.mask_decoder, embedding, image_pe, sparse, dense, multimask_output, transformer_fn
        )

    def postprocess(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits N×M×256×256 -> logits N×M×H×W at the original size."""
        return self.sam.postprocess_masks(low_res, self.input_size(original_size), original_size)

    def predict(
        self,
        embedding: torch.Tensor,
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

        Returns: logits N×M×H×W (threshold at ``sam.mask_threshold`` = 0), IoU N×M,
        low-res logits N×M×256×256.
        """
        sparse, dense = self.encode_prompts(original_size, points, point_labels, boxes, mask_inputs, float64_coords)
        low_res, iou = self.decode(embedding, sparse, dense, multimask_output, transformer_fn)
        return self.postprocess(low_res, original_size), iou, low_res
