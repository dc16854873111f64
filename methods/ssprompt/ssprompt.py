"""SSPrompt (spatial + semantic prompt learning) and its baselines, on a frozen SAM + CLIP.

Per image (``methods/ssprompt/README.md``; the base model is sambench's design, the paper has no code):
SAM image embedding (frozen, cached) + Q spatial prompt embeddings -> Q masks (SAM's decoder,
single-mask output, 256² low-res frame); each mask pools CLIP dense features (frozen, cached)
and is classified against the C semantic prompt embeddings; per-pixel class scores
``Σ_q p_q(c) σ(m_q)``; training: cross-entropy on the class-normalised scores against the labels
brought into the 256² frame; prediction: the scores sampled bilinearly at the original pixel
centres, argmax (exact frame geometry: :mod:`methods.ssprompt.frames`).

Registered names (which prompts learn; ``fusion`` picks the ablation for the learnt side):
``ssprompt`` (both), ``spaprompt`` (spatial), ``semprompt`` (semantic), ``zero_shot_prompts``
(neither: default grid points + class names), ``coop`` (CoOp context through the text encoder
at every step; default spatial prompts).
"""

from __future__ import annotations

import numpy as np
import torch

from sambench import tasks
from sambench.backbones.clip import ClipBackbone
from sambench.backbones.interface import ImageFeatures
from sambench.errors import ConfigError
from sambench.method import SambenchMethod
from sambench.backbones.clip_context import CoOpContext
from .defaults import semantic_defaults, spatial_defaults
from .frames import labels_to_low_res, low_res_to_image
from .fusion import PromptFusion
from .mask_classifier import class_probabilities, pooled_mask_features, semantic_loss, semantic_scores
from sambench.registry import METHODS, register_preset
from sambench.structures import Batch, Prediction, Sample

IGNORE = 255


class PromptLearningSegmenter(SambenchMethod):
    """Semantic segmentation by prompting a frozen SAM + CLIP.

    Args:
        sam: the wrapped SAM (frozen; image embeddings from the cache).
        class_names: the dataset's classes (semantic prompts), given by the composition root.
        clip: :class:`ClipBackbone` keyword arguments (model, checkpoint, dense_size, ...).
        fusion: ``weighted`` | ``average`` | ``learned`` for the sides this method learns.
        grid: spatial prompts = grid × grid points; grid_aspect: width/height of the grid frame.
        template: semantic prompt template.
        flip: probability of the horizontal flip in training.
        num_context: CoOp's context length.
        cache_dir: CLIP dense-feature cache (set by the composition root, as SAM's).
        learn_spatial / learn_semantic / coop: which prompts learn (CoOp: context vectors through
            the text encoder); fixed by each registered preset below.
    """

    TASK = tasks.SEMANTIC_FEW_SHOT
    ROOT_KWARGS = ("class_names", "cache_dir")

    def __init__(
        self, *, sam, class_names: list[str] | None = None, clip: dict | None = None, fusion: str = "weighted",
        grid: int = 10, grid_aspect: float = 2.0, template: str = "a photo of a {}.", flip: float = 0.5,
        num_context: int = 16, cache_dir: str | None = None, learn_spatial: bool = False,
        learn_semantic: bool = False, coop: bool = False,
    ):
        super().__init__()
        if not class_names:
            raise ConfigError(f"{type(self).__name__} needs the dataset's class names (semantic prompts)")
        if grid < 1 or grid_aspect <= 0:
            raise ConfigError(f"method.grid must be >= 1 and method.grid_aspect > 0 (got {grid}, {grid_aspect})")
        self.sam, self.class_names, self.flip = sam, list(class_names), flip
        self.sam.set_trainable()
        self.clip = ClipBackbone(**{"cache_dir": cache_dir, **(clip or {})})
        self.spatial = PromptFusion(spatial_defaults(sam, grid, grid_aspect),
                                    fusion if learn_spatial else "default")
        self.semantic = PromptFusion(semantic_defaults(self.clip, self.class_names, template),
                                     fusion if learn_semantic else "default")
        self.coop = CoOpContext(self.clip, self.class_names, num_context) if coop else None

    # ----- forward ----------------------------------------------------------------------------
    def class_embeddings(self) -> torch.Tensor:
        """C×D semantic prompt embeddings (CoOp: through the text encoder, every call)."""
        return self.coop(self.clip) if self.coop is not None else self.semantic()

    def scores(self, sam_features: ImageFeatures, features: torch.Tensor) -> torch.Tensor:
        """One image: SAM features (embedding 1×256×64×64), CLIP features D×g×g -> class scores C×256×256."""
        sparse = self.spatial()
        dense = self.sam.no_mask_embedding(len(sparse), tuple(sam_features.embedding.shape[-2:]))
        low_res, _ = self.sam.decode(sam_features, sparse, dense, multimask_output=False)  # Q×1×256×256
        masks = low_res[:, 0]
        probabilities = class_probabilities(pooled_mask_features(masks, features), self.class_embeddings(),
                                            float(self.clip.clip.logit_scale.exp()))
        return semantic_scores(probabilities, masks)

    def _target(self, semantic: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """H×W labels -> 256×256 labels in SAM's low-res frame (centre-aligned nearest; cells whose
        centre is in the padding = 255; :func:`labels_to_low_res`)."""
        frame = self.sam.image_size // 4
        return labels_to_low_res(semantic, self.sam.input_size(size), self.sam.image_size, frame, IGNORE)

    def _augment(self, sample: Sample) -> tuple[np.ndarray, torch.Tensor]:
        if self.flip > 0 and float(torch.rand(())) < self.flip:
            return np.ascontiguousarray(sample.image[:, ::-1]), sample.semantic.flip(-1)
        return sample.image, sample.semantic

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        pairs = [self._augment(sample) for sample in batch]
        images = [image for image, _ in pairs]
        sam_features, features = self.sam.training_features(images), self.clip.dense_features(images)
        losses = []
        for (image, labels), image_features, feature in zip(pairs, sam_features, features):
            target = self._target(labels.to(image_features.embedding.device), image.shape[:2])
            losses.append(semantic_loss(self.scores(image_features, feature), target))
        return {"loss_ce": torch.stack(losses).mean()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        images = [sample.image for sample in batch]
        sam_features, features = self.sam.embed_images(images), self.clip.dense_features(images)
        predictions = []
        for sample, image_features, feature in zip(batch, sam_features, features):
            scores = self.scores(image_features, feature).float()  # C×256×256
            full = low_res_to_image(scores, self.sam.input_size(sample.size), sample.size, self.sam.image_size)
            predictions.append(Prediction(index=sample.index, semantic=full.argmax(0).cpu()))
        return predictions


def _learns(spatial: bool = False, semantic: bool = False, coop: bool = False) -> dict:
    return dict(learn_spatial=spatial, learn_semantic=semantic, coop=coop)


register_preset(METHODS, "ssprompt", PromptLearningSegmenter, fixed=_learns(spatial=True, semantic=True),
                doc="Spatial and semantic prompts learnt (SpaPrompt + SemPrompt).")
register_preset(METHODS, "spaprompt", PromptLearningSegmenter, fixed=_learns(spatial=True),
                doc="Spatial prompts learnt; semantic prompts are the default class-name embeddings.")
register_preset(METHODS, "semprompt", PromptLearningSegmenter, fixed=_learns(semantic=True),
                doc="Semantic prompts learnt; spatial prompts are the default grid.")
register_preset(METHODS, "zero_shot_prompts", PromptLearningSegmenter, fixed=_learns(),
                doc="The default prompts, nothing trained (the paper's zero-shot row).")
register_preset(METHODS, "coop", PromptLearningSegmenter, fixed=_learns(coop=True),
                doc="CoOp: learnable context vectors before each class name, through CLIP's text encoder at every step; "
                    "default spatial prompts.")
