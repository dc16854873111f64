"""The SAM + CLIP baselines of Open-Vocabulary SAM (Yuan et al. 2024, Table 1;
``methods/ovsam/baselines.md``).

Per visual prompt a frozen SAM (full ViT encoder, embeddings from the cache) predicts a mask; a
frozen CLIP classifies the region against the vocabulary's text embeddings with the cosine
classifier (zero background prototype; the label is the argmax over the real classes):

- ``image_crop``: the image cropped to the mask's box, resized to CLIP's input size, through
  CLIP's image encoder;
- ``feature_crop``: CLIP's dense features (ViT patch tokens, or the ResNet ``attnpool`` value
  path per location) averaged inside the mask.

``coop=true`` learns CoOp context tokens (one context shared by every vocabulary) by
cross-entropy on GT instances whose masks SAM predicts from their GT boxes; otherwise the method is
training-free and the text embeddings are the ViLD-template ones (:class:`TextEmbeddingBank`).
"""

from __future__ import annotations

import numpy as np
import torch

from sambench import tasks
from sambench.backbones.clip import ClipBackbone
from sambench.backbones.interface import ImageFeatures
from sambench.errors import ConfigError
from sambench.method import SambenchMethod
from .classifier import cosine_logits
from .losses import classification_loss
from .center_points import POINT_RULES
from .prompting import DetectionBoxes, check_eval_prompt, gt_prompts, official_point_prompts
from .region_crops import mask_crops, mask_weights, pool_in_masks
from .text_embeddings import class_synonyms
from .vocabulary import TextEmbeddingBank
from sambench.backbones.clip_context import CoOpContext
from sambench.registry import METHODS
from sambench.structures import Batch, Detection, Prediction, Sample

def _lists_key(synonym_lists: list[list[str]] | None) -> tuple | None:
    """A hashable form of per-class synonym lists."""
    return None if synonym_lists is None else tuple(tuple(names) for names in synonym_lists)


#: Cosine-classifier scale (CLIP's trained logit scale, OV-SAM's exp(4.6052)).
LOGIT_SCALE = 100.0


class SamClipCropBaseline(SambenchMethod):
    """Frozen SAM masks classified by a frozen CLIP; subclasses embed the regions.

    Args:
        sam: the wrapped SAM (frozen; image embeddings from the cache).
        class_names: vocabulary used when a sample names none (samples normally do).
        clip: :class:`ClipBackbone` keyword arguments (model, checkpoint, allow_random_init,
            dense_size, ...); the paper's CLIP is RN50x16.
        prompt: evaluation prompts: ``box`` (GT boxes), ``point`` (GT interior points) or
            ``detections`` (an external detector's boxes, ``detections`` = COCO results json).
        coop: learn CoOp context tokens (trains); false = training-free ViLD-template embeddings.
        num_context: CoOp's context length.
        multimask_output: ask SAM for 3 masks and keep the best-scored one.
        detections / score_threshold / max_detections: the detector's boxes (``prompt=detections``).
        max_train_instances: GT instances per image per training step (largest first).
        point_rule: ``prompt=point``: ``official`` (OV-SAM's official points, as ``ovsam``) | ``edt``.
        cache_dir: SAM-embedding / CLIP-feature / text-embedding cache (set by the composition root).
    """

    TASK = tasks.OPEN_VOCAB_INSTANCE
    ROOT_KWARGS = ("class_names", "cache_dir")

    def __init__(
        self, *, sam, class_names: list[str] | None = None, clip: dict | None = None, prompt: str = "box",
        coop: bool = False, num_context: int = 16, multimask_output: bool = False, detections: str | None = None,
        score_threshold: float = 0.0, max_detections: int = 100, max_train_instances: int = 16,
        point_rule: str = "official", cache_dir: str | None = None,
    ):
        super().__init__()
        check_eval_prompt(prompt, detections)
        if point_rule not in POINT_RULES:
            raise ConfigError(f"unknown method.point_rule '{point_rule}'; valid: {', '.join(POINT_RULES)}")
        if num_context < 1 or max_train_instances < 1 or max_detections < 1:
            raise ConfigError(f"method.num_context, method.max_train_instances and method.max_detections must be >= 1 "
                              f"(got {num_context}, {max_train_instances}, {max_detections})")
        sam.set_trainable()
        self.sam = sam
        self.clip = ClipBackbone(**{"cache_dir": cache_dir, **(clip or {"model": "RN50x16"})})
        self.class_names = list(class_names) if class_names else None
        self.prompt, self.multimask_output, self.max_train_instances = prompt, multimask_output, max_train_instances
        self.point_rule = point_rule
        self.text_bank = TextEmbeddingBank(self.clip, cache_dir)
        self.coop = CoOpContext(self.clip, None, num_context) if coop else None
        self.detections = DetectionBoxes(detections, score_threshold, max_detections) if prompt == "detections" else None
        self._eval_text: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (vocabulary, device)

    def train(self, mode: bool = True) -> "SamClipCropBaseline":
        """Only the CoOp context trains: SAM stays in eval mode (CLIP always does)."""
        super().train(mode)
        self.sam.eval()
        return self

    # ----- regions (subclasses) ---------------------------------------------------------------
    def region_embeddings(self, sample: Sample, masks: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        """Masks N×H×W bool at the original size and SAM low-res logits N×256×256 -> N×D."""
        raise NotImplementedError

    # ----- text -------------------------------------------------------------------------------
    def vocabulary(self, sample: Sample) -> list[str]:
        names = sample.class_names or self.class_names
        if not names:
            raise ConfigError(f"{type(self).__name__}: sample {sample.index} has no class_names and the method was "
                              "given none (open-vocabulary datasets name their vocabulary)")
        return list(names)

    @staticmethod
    def synonym_lists(sample: Sample) -> list[list[str]] | None:
        """The sample's per-class synonym lists (``dataset.class_names_file``), or None (split the names)."""
        lists = sample.meta.get("synonym_lists") if sample.class_names else None
        return None if lists is None else [list(names) for names in lists]

    def class_embeddings(self, class_names: list[str], synonym_lists: list[list[str]] | None = None) -> torch.Tensor:
        """C×P×D text embeddings: CoOp context + the class's first synonym (P = 1; through the text
        encoder, differentiable) or the cached ViLD-template embeddings with synonyms."""
        if self.coop is None:
            return self.text_bank(class_names, synonym_lists)
        if synonym_lists is not None:
            names = [names[0] for names in synonym_lists]
        else:
            names = [class_synonyms(name)[0] for name in class_names]
        return self.coop.encode(self.clip, names)[:, None]

    def _frozen_class_embeddings(self, class_names: list[str], synonym_lists: list[list[str]] | None = None) -> torch.Tensor:
        """Evaluation: CoOp embeddings computed once per vocabulary while the context is unchanged."""
        if self.coop is None:
            return self.text_bank(class_names, synonym_lists)
        context = self.coop.context.detach()
        key = (tuple(class_names), _lists_key(synonym_lists), str(context.device))
        cached = self._eval_text.get(key)
        if cached is None or not torch.equal(cached[0], context):
            cached = (context.clone(), self.class_embeddings(class_names, synonym_lists).detach())
            self._eval_text[key] = cached
        return cached[1]

    # ----- masks ------------------------------------------------------------------------------
    def segment(self, sample: Sample, features: ImageFeatures, prompts: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen SAM on one image's features (batch dim 1), N prompts -> (masks N×H×W bool at the
        original size, low-res logits N×256×256)."""
        with torch.no_grad():
            logits, iou, low_res = self.sam.predict(features, sample.size, multimask_output=self.multimask_output, **prompts)
        rows = torch.arange(len(iou), device=iou.device)
        best = iou.argmax(dim=1)
        return logits[rows, best] > self.sam.mask_threshold, low_res[rows, best]

    def _regions(self, sample: Sample, features: ImageFeatures, prompts: dict):
        masks, low_res = self.segment(sample, features, prompts)
        with torch.no_grad():
            regions = self.region_embeddings(sample, masks, low_res)
        return masks, regions

    # ----- training (CoOp) --------------------------------------------------------------------
    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """CoOp: cross-entropy of the region logits against the GT classes (masks from GT boxes)."""
        if self.coop is None:
            return super().training_step(batch)
        features = self.sam.embed_images([sample.image for sample in batch])
        groups: dict[tuple, tuple[list, list]] = {}  # (names, synonym lists) -> (regions, labels)
        for sample, image_features in zip(batch, features):
            if sample.num_instances == 0:
                continue
            keep = torch.argsort(sample.masks.flatten(1).sum(1), descending=True, stable=True)[: self.max_train_instances]
            prompts = {key: value[keep] for key, value in gt_prompts(sample, "box").items()}
            _, regions = self._regions(sample, image_features, prompts)
            vocabulary = (tuple(self.vocabulary(sample)), _lists_key(self.synonym_lists(sample)))
            regions_list, labels = groups.setdefault(vocabulary, ([], []))
            regions_list.append(regions)
            labels.append(sample.class_ids[keep])
        total, count = self.coop.context.sum() * 0.0, 0
        for (vocabulary, lists), (regions, labels) in groups.items():
            labels = torch.cat(labels).to(self.clip.device)
            text = self.class_embeddings(list(vocabulary), None if lists is None else [list(n) for n in lists])
            logits = cosine_logits(torch.cat(regions), text, LOGIT_SCALE)
            total = total + classification_loss(logits, labels) * len(labels)
            count += len(labels)
        return {"loss_ce": total / max(count, 1)}

    # ----- prediction -------------------------------------------------------------------------
    def classify(self, regions: torch.Tensor, class_names: list[str],
                 synonym_lists: list[list[str]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions K×D -> (labels K long over the real classes only, their softmax probability K
        over classes + background)."""
        logits = cosine_logits(regions, self._frozen_class_embeddings(class_names, synonym_lists), LOGIT_SCALE).float()
        labels = logits[:, :-1].argmax(dim=1)
        return labels, logits.softmax(dim=1).gather(1, labels[:, None])[:, 0]

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        features = self.sam.embed_images([sample.image for sample in batch])
        predict_one = self._predict_detections if self.detections is not None else self._predict_instances
        return [predict_one(sample, image_features) for sample, image_features in zip(batch, features)]

    def _predict_instances(self, sample: Sample, features: ImageFeatures) -> Prediction:
        """One prediction per GT instance, prompted by its box or interior point."""
        if sample.num_instances == 0:
            h, w = sample.size
            return Prediction(index=sample.index, masks=torch.zeros(0, h, w, dtype=torch.bool),
                              class_ids=torch.zeros(0, dtype=torch.long), scores=torch.zeros(0))
        if self.prompt == "point" and self.point_rule == "official":  # the same points as OV-SAM's * rows
            prompts = official_point_prompts(sample, self.sam.input_size(sample.size), self.sam.KEEPS_ASPECT)
        else:
            prompts = gt_prompts(sample, self.prompt)
        masks, regions = self._regions(sample, features, prompts)
        labels, scores = self.classify(regions, self.vocabulary(sample), self.synonym_lists(sample))
        return Prediction(index=sample.index, masks=masks.cpu(), class_ids=labels.cpu(), scores=scores.cpu())

    def _predict_detections(self, sample: Sample, features: ImageFeatures) -> Prediction:
        """The detector's boxes as prompts; score = detector score × class probability."""
        boxes, box_scores = self.detections(sample.meta.get("image_id", sample.index))
        detections = []
        if len(boxes):
            masks, regions = self._regions(sample, features, {"boxes": boxes})
            labels, scores = self.classify(regions, self.vocabulary(sample), self.synonym_lists(sample))
            for box, box_score, label, score, mask in zip(boxes.tolist(), box_scores.tolist(), labels.tolist(),
                                                          scores.tolist(), masks.cpu()):
                detections.append(Detection(bbox=box, score=box_score * score, class_id=label, mask=mask))
        return Prediction(index=sample.index, detections=detections)


@METHODS.register_module(name="image_crop")
class ImageCrop(SamClipCropBaseline):
    """Image-Crop: the image inside each mask's bounding box through CLIP's image encoder.

    Args:
        mask_background: grey out (CLIP's mean colour) the crop's pixels outside the mask.
        (the rest as :class:`SamClipCropBaseline`)
    """

    #: Crops per CLIP forward pass.
    CHUNK = 64

    def __init__(self, *, sam, class_names: list[str] | None = None, cache_dir: str | None = None,
                 mask_background: bool = False, **options):
        super().__init__(sam=sam, class_names=class_names, cache_dir=cache_dir, **options)
        self.mask_background = mask_background
        size = self.clip.clip.visual.image_size
        self.crop_size = int(size if isinstance(size, int) else size[0])

    def region_embeddings(self, sample: Sample, masks: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        crops = mask_crops(np.asarray(sample.image), masks.to(self.clip.device), self.crop_size, self.mask_background)
        return torch.cat([self.clip.clip.encode_image(chunk) for chunk in crops.split(self.CHUNK)]).float()


@METHODS.register_module(name="feature_crop")
class FeatureCrop(SamClipCropBaseline):
    """Feature-Crop: frozen CLIP dense features (cached) averaged inside each SAM mask (SAM's
    256² low-res frame; the features share its top-left letterbox)."""

    def region_embeddings(self, sample: Sample, masks: torch.Tensor, low_res: torch.Tensor) -> torch.Tensor:
        dense = self.clip.dense_features if self.clip.is_vit else self.clip.resnet_dense_features
        features = dense([sample.image])[0]  # D×g×g
        return pool_in_masks(features, mask_weights(low_res).to(features.device))
