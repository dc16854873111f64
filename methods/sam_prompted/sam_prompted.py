"""SAM prompted by ground-truth boxes or points: the "SAM" and "SAM (fine-tuned)" baselines.

Zero-shot (``finetune=none``) or with the mask decoder fine-tuned by Dice + BCE
(``finetune=decoder``); the image encoder and prompt encoder stay frozen, so image embeddings
come from the embedding cache (unless ``method.peft`` trains the encoder or adds adapters to it:
then they are computed with gradients). Evaluated by per-instance mean IoU. Input path = that of
``SamPredictor.predict`` (prompts scaled to the 1024 frame in float64): ``methods/sam_prompted/README.md``.
"""

from __future__ import annotations

import torch

from sambench import tasks
from sambench.backbones.interface import ImageFeatures
from sambench.errors import ConfigError
from sambench.evaluation.instance_iou import mask_iou
from sambench.losses import bce_loss, dice_loss
from sambench.method import SambenchMethod
from sambench.prompts import interior_points, mask_boxes
from sambench.registry import METHODS
from sambench.structures import Batch, Prediction, Sample

PROMPTS = ("box", "point", "box_point")
FINETUNE = ("none", "decoder")


@METHODS.register_module(name="sam_prompted")
class SamPrompted(SambenchMethod):
    """One mask per GT instance from its box and/or interior point.

    Args:
        sam: the wrapped SAM backbone.
        prompt: ``box`` (GT box), ``point`` (point farthest from the mask boundary) or both.
        finetune: ``none`` or ``decoder`` (train the mask decoder).
        multimask_output: ask SAM for 3 masks and keep the one with the best predicted IoU
            (SAM's own choice for ambiguous single points); otherwise its single-mask output.
        dice_weight / bce_weight: loss weights.
        iou_weight: weight of SAM's IoU-prediction loss (MSE between the predicted and the
            actual IoU of each mask); 0 freezes the IoU head, which then gets no gradient.
        max_train_instances: prompts per image per training step (largest instances first).
    """

    TASK = tasks.PROMPTED_INSTANCE

    def __init__(
        self, *, sam, prompt: str = "box", finetune: str = "decoder", multimask_output: bool = False,
        dice_weight: float = 1.0, bce_weight: float = 1.0, iou_weight: float = 0.0,
        max_train_instances: int = 16,
    ):
        super().__init__()
        if prompt not in PROMPTS:
            raise ConfigError(f"unknown method.prompt '{prompt}'; valid: {', '.join(PROMPTS)}")
        if finetune not in FINETUNE:
            raise ConfigError(f"unknown method.finetune '{finetune}'; valid: {', '.join(FINETUNE)}")
        self.sam, self.prompt, self.multimask_output = sam, prompt, multimask_output
        self.dice_weight, self.bce_weight, self.iou_weight = dice_weight, bce_weight, iou_weight
        self.max_train_instances = max_train_instances
        decoder = finetune == "decoder"
        self.sam.set_trainable(mask_decoder=decoder, iou_head=decoder and iou_weight > 0)

    def prompts(self, sample: Sample) -> dict:
        """Keyword prompts for :meth:`SamBackbone.predict` from the sample's GT masks/boxes."""
        out = {}
        if "box" in self.prompt:
            out["boxes"] = sample.boxes if sample.boxes is not None else mask_boxes(sample.masks)
        if "point" in self.prompt:
            out["points"] = interior_points(sample.masks)
            out["point_labels"] = torch.ones(out["points"].shape[:2], dtype=torch.long)
        return out

    def _masks_for(self, sample: Sample, features: ImageFeatures, keep: torch.Tensor | None = None):
        """One image's features (batch dim 1) -> logits N×H×W (one mask per instance) and predicted IoU N."""
        prompts = self.prompts(sample)
        if keep is not None:
            prompts = {k: v[keep] for k, v in prompts.items()}
        logits, iou, _ = self.sam.predict(features, sample.size, multimask_output=self.multimask_output,
                                          float64_coords=True, **prompts)  # scaled as SamPredictor.predict
        best = iou.argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        return logits[rows, best], iou[rows, best]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Dice + BCE at the original image size, mean over instances, then over images."""
        features = self.sam.training_features([s.image for s in batch])  # cached unless the encoder trains
        dice, bce, iou_mse = [], [], []
        for sample, image_features in zip(batch, features):
            areas = sample.masks.flatten(1).sum(1)
            keep = torch.argsort(areas, descending=True, stable=True)[: self.max_train_instances]
            logits, predicted_iou = self._masks_for(sample, image_features, keep)
            target = sample.masks[keep].to(logits.device)
            dice.append(dice_loss(logits, target).mean())
            bce.append(bce_loss(logits, target).mean())
            if self.iou_weight > 0:
                actual = mask_iou(logits.detach() > 0, target).float()
                iou_mse.append(((predicted_iou.float() - actual) ** 2).mean())
        losses = {
            "loss_dice": self.dice_weight * torch.stack(dice).mean(),
            "loss_bce": self.bce_weight * torch.stack(bce).mean(),
        }
        if iou_mse:
            losses["loss_iou"] = self.iou_weight * torch.stack(iou_mse).mean()
        return losses

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        features = self.sam.embed_images([s.image for s in batch])
        predictions = []
        for sample, image_features in zip(batch, features):
            logits, scores = self._masks_for(sample, image_features)
            predictions.append(Prediction(index=sample.index, masks=(logits > self.sam.mask_threshold).cpu(), scores=scores.float().cpu()))
        return predictions
