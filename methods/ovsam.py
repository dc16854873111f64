"""Open-Vocabulary SAM (Yuan et al. 2024), stage 1: SAM2CLIP (``methods/ovsam.md``).

``sam2clip``: a frozen CLIP ResNet (RN50x16 by default) sees the image exactly as SAM does
(longest side 1024, SAM's ImageNet mean/std, zero padding to 1024²); its four stage maps go through
the trainable :class:`~sambench.ovsam.adapter.Sam2ClipAdapter`, trained by MSE to the SAM
teacher's image embedding (256×64×64). Teacher embeddings come from the embedding cache: each is
computed once and reused every epoch (the teacher's encoder runs only on a cache miss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sambench.backbones.clip import ClipBackbone
from sambench.data.base import IMAGE_DISTILLATION
from sambench.method import SambenchMethod
from sambench.ovsam.adapter import Sam2ClipAdapter
from sambench.registry import METHODS
from sambench.structures import Batch, Prediction


def resnet_stage_channels(clip: ClipBackbone) -> tuple[int, ...]:
    """Output channels of layer1..layer4 of a CLIP ResNet (RN50x16: 384, 768, 1536, 3072)."""
    visual = clip.clip.visual
    return tuple(int(getattr(visual, f"layer{i}")[-1].conv3.out_channels) for i in range(1, 5))


@METHODS.register_module(name="sam2clip")
class Sam2Clip(SambenchMethod):
    """Args:
        sam: the teacher (its image encoder, through the cache); its ViT width and position
            embedding size the adapter (ViT-H: 1280, 64×64).
        clip: :class:`ClipBackbone` keyword arguments (a ResNet model: RN50x16 officially).
        num_heads / depth / window: the adapter's transformer (official: 16 / 5 / 14).
    """

    TASK = IMAGE_DISTILLATION

    def __init__(self, *, sam, clip: dict | None = None, num_heads: int = 16, depth: int = 5, window: int = 14):
        super().__init__()
        self.sam = sam.requires_grad_(False)
        self.clip = ClipBackbone(**(clip or {"model": "RN50x16"}))
        encoder = sam.sam.image_encoder
        self.adapter = Sam2ClipAdapter(in_channels=resnet_stage_channels(self.clip), dim=encoder.pos_embed.shape[-1],
                                       num_heads=num_heads, depth=depth, grid=encoder.pos_embed.shape[1], window=window)
        self.adapter.copy_pos_embed(encoder)

    def student(self, images) -> torch.Tensor:
        """Images -> student embeddings B×256×64×64 (CLIP frozen, adapter trainable)."""
        pixels = torch.cat([self.sam.preprocess(image) for image in images])
        with torch.no_grad():
            stages = self.clip.stage_features(pixels)
        return self.adapter(stages)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        images = [sample.image for sample in batch]
        teacher = self.sam.embed_images(images)
        return {"loss_mse": F.mse_loss(self.student(images), teacher)}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        images = [sample.image for sample in batch]
        teacher, student = self.sam.embed_images(images), self.student(images).float()
        predictions = []
        for sample, t, s in zip(batch, teacher, student):
            cosine = F.cosine_similarity(s, t, dim=0).mean()
            predictions.append(Prediction(index=sample.index, meta={"mse": float(F.mse_loss(s, t)), "cosine": float(cosine)}))
        return predictions
