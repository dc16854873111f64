"""PerSAM (training-free) and PerSAM-F (two fitted mask-scale weights), as the official code.

Per concept, the reference image(s) and mask(s) give a target feature; on each test image its
similarity map gives a location prior (positive + negative point), the target-guided attention
bias and the target-semantic prompt for the first decoder pass, followed by two cascaded
refinements. Everything goes through the wrapped SAM's decoder extension point. Defaults
reproduce the official code (its ``persam.py`` / ``persam_f.py`` scripts); the paper's variants
are options (``methods/persam/README.md``). Beyond the official code: several references per concept (pooled
target feature, PerSAM-F fitted on all) and several instances per image.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sambench import tasks
from sambench.backbones.interface import TWO_WAY_TRANSFORMER_FN, ImageFeatures
from sambench.checkpoint import save_atomic
from sambench.errors import ConfigError
from sambench.evaluation.instance_iou import mask_iou
from sambench.method import SambenchMethod
from .guided_decoder import PerSAMTransformer
from .prior import (
    densest_cell_mask, foreground_features, guidance, local_similarity_map, location_prior, mask_box, normalise,
    reference_cells, similarity_map,
)
from .scale_weights import MaskScaleWeights, fit_scale_weights
from .video import PerSAMFVideo, PerSAMFVideoOptions, PerSAMVideo, PerSAMVideoOptions
from sambench.registry import METHODS
from sambench.structures import Batch, Prediction, Sample
from sambench.weights_file import load_weights_file

log = logging.getLogger(__name__)
CONFIDENCE_MAPS = ("global", "local")
#: Concepts kept in memory (each holds K×256 features, K up to 4096, and PerSAM-F's weights).
CACHED_CONCEPTS = 16



@dataclass
class Concept:
    """What a concept's references give: fg features K×256, target embedding 1×256 (mean of the
    fg features), target feature 1×256 (L2-normalised), PerSAM-F weights when fitted, and the
    number of references that kept no 64×64 cell (reported once, in the next prediction)."""

    fg_features: torch.Tensor
    target_embedding: torch.Tensor
    target_feat: torch.Tensor
    scale_weights: MaskScaleWeights | None = None
    reference_fallbacks: int = 0


@METHODS.register_module(name="persam")
class PerSAM(SambenchMethod):
    """Training-free personalisation. Each switch removes one component (the paper's ablation).

    Args:
        sam: the wrapped SAM.
        negative_point: add the lowest-similarity point as a background prompt.
        guided_attention: target-guided attention in the decoder (``attn_sim``).
        guidance_alpha: weight of the guidance (official code: 1).
        semantic_prompt: add the target embedding to the decoder's tokens.
        refinement_steps: cascaded post-refinements, 0..2 (official: 2).
        positive_points: top-k positive points (official: 1).
        confidence_map: ``global`` (cosine to the mean target feature; official) or ``local``
            (mean of per-foreground-cell similarity maps, the later paper version).
        max_instances: instances per image: segment, suppress the found region's similarity,
            re-select, until this count or until a new mask overlaps an earlier one.
        instance_overlap: IoU with an earlier mask that stops the repetition.
        task: ``personalize`` (images) or ``video_object`` (DAVIS; set by the composition root).
        video: ``method.video``, the video options (:class:`~.video.PerSAMVideoOptions`).
    """

    TASK = tasks.PERSONALIZE
    TASKS = (tasks.PERSONALIZE, tasks.VIDEO_OBJECT)
    ROOT_KWARGS = ("task",)
    REQUIRES = frozenset({TWO_WAY_TRANSFORMER_FN})  # target-guided attention in the two-way transformer

    def __init__(
        self, *, sam, negative_point: bool = True, guided_attention: bool = True, guidance_alpha: float = 1.0,
        semantic_prompt: bool = True, refinement_steps: int = 2, positive_points: int = 1,
        confidence_map: str = "global", max_instances: int = 1, instance_overlap: float = 0.5,
        task=None, video: dict | None = None,
    ):
        super().__init__()
        self.TASK = task or tasks.PERSONALIZE
        self.video = self.video_options(video)
        if confidence_map not in CONFIDENCE_MAPS:
            raise ConfigError(f"unknown method.confidence_map '{confidence_map}'; valid: {', '.join(CONFIDENCE_MAPS)}")
        if not 0 <= refinement_steps <= 2 or positive_points < 1 or max_instances < 1:
            raise ConfigError("method.refinement_steps must be 0..2, positive_points and max_instances >= 1")
        sam.set_trainable()
        self.sam = sam
        self.negative_point, self.guided_attention, self.guidance_alpha = negative_point, guided_attention, guidance_alpha
        self.semantic_prompt, self.refinement_steps = semantic_prompt, refinement_steps
        self.positive_points, self.confidence_map = positive_points, confidence_map
        self.max_instances, self.instance_overlap = max_instances, instance_overlap
        self._concepts: OrderedDict[tuple, Concept] = OrderedDict()

    def video_options(self, video: dict | None):
        return PerSAMVideoOptions.from_config(video)

    def video_tracker(self) -> PerSAMVideo:
        return PerSAMVideo(sam=self.sam, options=self.video)

    # ----- concepts ---------------------------------------------------------------------------
    def adapt(self, sample: Sample) -> Concept:
        """Test-time adaptation to the sample's concept (its references): target features, and
        for PerSAM-F the fitted weights. Computed once per reference set (names and masks), then
        kept among the last :data:`CACHED_CONCEPTS` (one-shot benchmarks have thousands)."""
        key = tuple((ref.name, hashlib.sha1(np.packbits(ref.mask)).hexdigest()) for ref in sample.references)
        if key in self._concepts:
            self._concepts.move_to_end(key)
            return self._concepts[key]
        features = self.sam.embed_images([ref.image for ref in sample.references])
        fg, fallbacks = [], 0
        for ref, ref_features in zip(sample.references, features):
            cells = reference_cells(self.sam, ref.mask_rgb)
            if not bool(cells.any()) and ref.mask.any():  # an empty mask stays a clear error (foreground_features)
                log.warning("PerSAM: reference %s keeps no foreground cell at 64x64 (a small object; the official "
                            "code averages an empty set into NaN); using the cell holding most of its pixels", ref.name)
                cells, fallbacks = densest_cell_mask(self.sam, ref.mask, cells.shape[0]), fallbacks + 1
            fg.append(foreground_features(ref_features.embedding[0], cells, ref.name))
        concept = self.build_concept(torch.cat(fg), sample, features)
        concept.reference_fallbacks = fallbacks
        self._concepts[key] = concept
        while len(self._concepts) > CACHED_CONCEPTS:
            self._concepts.popitem(last=False)
        return concept

    def build_concept(self, fg: torch.Tensor, sample: Sample, features: ImageFeatures) -> Concept:
        """``fg`` K×256 foreground features of the references, ``features`` theirs (batch R)."""
        target_embedding = fg.mean(0, keepdim=True)
        return Concept(fg, target_embedding, normalise(target_embedding))

    def similarity(self, concept: Concept, embedding: torch.Tensor, size) -> torch.Tensor:
        """H×W confidence map of one image (embedding 256×64×64)."""
        if self.confidence_map == "local":
            return local_similarity_map(self.sam, concept.fg_features, embedding, size)
        return similarity_map(self.sam, concept.target_feat, embedding, size)

    # ----- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        if self.TASK == tasks.VIDEO_OBJECT:
            return [self.video_tracker().track(sample) for sample in batch]
        features = self.sam.embed_images([s.image for s in batch])
        predictions = []
        for sample, image_features in zip(batch, features):
            concept = self.adapt(sample)
            masks, fallbacks = self.segment_instances(concept, image_features, sample.size)
            fallbacks, concept.reference_fallbacks = fallbacks + concept.reference_fallbacks, 0  # counted once
            predictions.append(Prediction(index=sample.index, masks=torch.stack(masks).cpu(), fallbacks=fallbacks))
        return predictions

    def segment_instances(self, concept: Concept, features: ImageFeatures, size) -> tuple[list[torch.Tensor], int]:
        """One image's features (batch dim 1) -> up to ``max_instances`` H×W bool masks; returns
        (masks, number of empty-mask fallbacks)."""
        sim = self.similarity(concept, features.embedding[0], size)
        masks, fallbacks, found = [], 0, torch.zeros_like(sim, dtype=torch.bool)
        for _ in range(self.max_instances):
            search = sim.masked_fill(found, float(sim.min())) if masks else sim
            mask, failed = self.segment(concept, features, size, search, negative_from=sim)
            if masks and (not mask.any() or max(float(mask_iou(mask[None], m[None])) for m in masks) > self.instance_overlap):
                break
            masks.append(mask)
            fallbacks += failed
            found |= mask
        return masks, fallbacks

    def prompts(self, sim: torch.Tensor, negative_from: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points 1×P×2 and labels 1×P from the location prior."""
        positives, _ = location_prior(sim, self.positive_points)
        points, labels = [positives], [torch.ones(len(positives), dtype=torch.long)]
        if self.negative_point:
            points.append(location_prior(negative_from)[1])
            labels.append(torch.zeros(1, dtype=torch.long))
        return torch.cat(points)[None], torch.cat(labels)[None]

    def segment(self, concept, features, size, sim, negative_from) -> tuple[torch.Tensor, int]:
        """One instance of the image whose ``features`` (batch dim 1, or its 1×256×64×64 embedding)
        are given: the guided first pass and the cascaded refinements -> (H×W mask, fallbacks)."""
        points, labels = self.prompts(sim, negative_from)
        t = concept.target_embedding if self.semantic_prompt else None
        attn_sim = guidance(sim) if self.guided_attention else None
        fn = PerSAMTransformer(t, attn_sim, self.guidance_alpha) if (t is not None or attn_sim is not None) else None
        logits, _, low = self.sam.predict(features, size, points, labels, multimask_output=False, transformer_fn=fn,
                                          float64_coords=True)
        return self.refine(features, size, points, labels, logits[0, 0], low[0, 0], box_first=False)

    def refine(self, features, size, points, labels, logits, low, box_first: bool) -> tuple[torch.Tensor, int]:
        """Cascaded post-refinement from H×W ``logits`` and 256×256 ``low``: step 1 feeds the low-res
        logits back (with the mask's box when ``box_first``), step 2 adds the box of step 1's best
        mask; each keeps the highest predicted IoU. An empty mask skips its box (counted)."""
        mask, fallbacks = logits > self.sam.mask_threshold, 0
        for step in range(1, self.refinement_steps + 1):
            wants_box = step == 2 or box_first
            box = mask_box(mask) if wants_box else None
            fallbacks += int(wants_box and box is None)
            logits_m, iou, low_m = self.sam.predict(features, size, points, labels, boxes=box,
                                                    mask_inputs=low[None, None], multimask_output=True,
                                                    float64_coords=True)
            best = int(iou[0].argmax())
            mask, low = logits_m[0, best] > self.sam.mask_threshold, low_m[0, best]
        return mask, fallbacks


@METHODS.register_module(name="persam_f")
class PerSAMF(PerSAM):
    """PerSAM-F: no guidance, no target embedding, no negative point; target feature
    L2-normalise((max + mean)/2) of the masked reference features; two mask-scale weights fitted
    per concept on its reference(s) (AdamW, cosine, dice + focal) against the frozen decoder's
    three outputs, which are computed once (``precompute_decoder``; the official code recomputes
    them every iteration, with the same result).

    Args:
        iterations, lr, eps, weight_decay: the fitting (official: 1000, 1e-3, 1e-4, 0.01).
        precompute_decoder: compute the decoder outputs once (True) or every iteration.
        weights_dir: a folder of fitted weights (``<concept>.pt``) to reuse instead of fitting.
        run_dir: where fitted weights are saved (``<run>/persam_f_weights/<concept>.pt``; video:
            ``<seq>_<object>.pt``).
        task, video: as PerSAM (``method.video``: :class:`~.video.PerSAMFVideoOptions`).
    """

    ROOT_KWARGS = ("run_dir", "task")

    def __init__(
        self, *, sam, iterations: int = 1000, lr: float = 1e-3, eps: float = 1e-4, weight_decay: float = 0.01,
        precompute_decoder: bool = True, weights_dir: str | None = None, run_dir: Path | None = None,
        refinement_steps: int = 2, positive_points: int = 1, confidence_map: str = "global",
        max_instances: int = 1, instance_overlap: float = 0.5, task=None, video: dict | None = None,
    ):
        super().__init__(
            sam=sam, negative_point=False, guided_attention=False, semantic_prompt=False,
            refinement_steps=refinement_steps, positive_points=positive_points, confidence_map=confidence_map,
            max_instances=max_instances, instance_overlap=instance_overlap, task=task, video=video,
        )
        self.fit_options = dict(iterations=iterations, lr=lr, eps=eps, weight_decay=weight_decay)
        self.precompute_decoder = precompute_decoder
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.save_dir = Path(run_dir) / "persam_f_weights" if run_dir else None

    def video_options(self, video: dict | None):
        return PerSAMFVideoOptions.from_config(video)

    def video_tracker(self) -> PerSAMFVideo:
        return PerSAMFVideo(sam=self.sam, options=self.video, precompute_decoder=self.precompute_decoder,
                            weights_dir=self.weights_dir, save_dir=self.save_dir)

    def build_concept(self, fg: torch.Tensor, sample: Sample, features: ImageFeatures) -> Concept:
        target = normalise((fg.max(0).values + fg.mean(0)) / 2)[None]
        concept = Concept(fg, fg.mean(0, keepdim=True), target)
        concept.scale_weights = self.load_or_fit(concept, sample, features)
        return concept

    def concept_name(self, sample: Sample) -> str:
        return str(sample.meta.get("concept") or sample.meta.get("object") or "_".join(r.name for r in sample.references)).replace("/", "_")

    def load_or_fit(self, concept: Concept, sample: Sample, features: ImageFeatures) -> MaskScaleWeights:
        """The concept's weights from ``weights_dir``, else fitted on the references (``features``: theirs)."""
        name = self.concept_name(sample)
        device = features.embedding.device
        if self.weights_dir and (self.weights_dir / f"{name}.pt").is_file():
            saved = load_weights_file(self.weights_dir / f"{name}.pt", "PerSAM-F weights saved by sambench")
            weights = MaskScaleWeights().to(device)
            weights.weights.data.copy_(saved["weights"])
            return weights.eval()
        prompts = [self.reference_prompt(concept, ref, ref_features.embedding[0])
                   for ref, ref_features in zip(sample.references, features)]
        targets = [torch.as_tensor(ref.mask, device=device) for ref in sample.references]

        @torch.no_grad()
        def decoder_maps() -> list[torch.Tensor]:
            """The frozen decoder's 3×H×W full-resolution logits on every reference."""
            return [self.sam.predict(ref_features, size, points, labels, multimask_output=True, float64_coords=True)[0][0]
                    for ref_features, (size, points, labels) in zip(features, prompts)]

        fitted = fit_scale_weights(decoder_maps() if self.precompute_decoder else decoder_maps, targets,
                                   **self.fit_options)
        if self.save_dir:
            save_atomic({"weights": fitted.weights.detach().cpu(), "references": [r.name for r in sample.references]},
                        self.save_dir / f"{name}.pt")
        log.info("PerSAM-F %s: weights %s", name, [round(w, 4) for w in fitted.weights.detach().tolist()])
        return fitted

    def reference_prompt(self, concept: Concept, ref, embedding: torch.Tensor):
        """(size, points 1×1×2, labels 1×1): the reference's positive point from its own
        similarity map; the GT is the reference mask's red channel > 0 (no erosion)."""
        size = ref.image.shape[:2]
        points, labels = self.prompts(similarity_map(self.sam, concept.target_feat, embedding, size), None)
        return size, points, labels

    def segment(self, concept, features, size, sim, negative_from) -> tuple[torch.Tensor, int]:
        """Weighted mix of the 3 outputs from the positive point, then two box refinements."""
        points, labels = self.prompts(sim, negative_from)
        logits, _, low = self.sam.predict(features, size, points, labels, multimask_output=True, float64_coords=True)
        weights = concept.scale_weights
        return self.refine(features, size, points, labels, weights(logits[0]), weights(low[0]), box_first=True)
