"""PerSAM and PerSAM-F on video (DAVIS 2017, semi-supervised), as the official ``persam_video.py``
and ``persam_video_f.py``.

Per object, a target feature from the first frame's mask; per later frame and object, the
top-k points of its similarity map plus the centre of its previous box (expanded by
``box_margin``) prompt SAM with that box, followed by two refinements; the objects' final
logits are merged by a per-pixel argmax against a zero background, and the next frame's boxes
come from that label map. Defaults reproduce the official scripts, their quirks included (each
one a ``method.video`` option, ``methods/persam/README.md`` "Video"). Shapes: frames H×W×3
uint8; label maps H×W uint8 (0 background, j + 1 = the sample's j-th object).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sambench.checkpoint import save_atomic
from sambench.dist import rank
from sambench.errors import ConfigError, DatasetError
from sambench.logging.console import progress
from sambench.structures import Prediction, Sample
from sambench.weights_file import load_weights_file
from .prior import densest_cell_mask, mask_box, normalise, reference_cells, similarity_map
from .scale_weights import MaskScaleWeights, fit_scale_weights

log = logging.getLogger(__name__)
FIRST_PICKS = ("uint8_area", "area", "score")
LOST_OBJECTS = ("official", "keep_last_box")
EMPTY_MIX_PICKS = ("first_weight_score", "score")


# ----- options (``method.video``) ----------------------------------------------------------------
@dataclass(frozen=True)
class VideoOptions:
    """``method.video`` shared by PerSAM and PerSAM-F (defaults: the official scripts).

    topk: positive points from the similarity map (``--topk``: PerSAM 2, PerSAM-F 1).
    mask_value: the first-frame mask's red value before SAM's preprocessing (``--exp`` 215).
    box_margin: pixels added to each side of the previous box (``--threshold`` 10).
    lost_objects: ``official`` (next boxes = the present labels in order: a vanished object
        shifts the later objects' boxes down and the last objects are dropped) or
        ``keep_last_box`` (each object keeps its own last non-empty box).
    """

    topk: int = 2
    mask_value: int = 215
    box_margin: int = 10
    lost_objects: str = "official"

    @classmethod
    def from_config(cls, values: dict | None, **defaults):
        """The options from a ``method.video`` mapping (unknown keys and values are ConfigErrors)."""
        values = {**defaults, **(values or {})}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) method.video.{', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        options = cls(**values)
        options.check()
        return options

    def check(self) -> None:
        if self.topk < 1 or not 0 < self.mask_value <= 255 or self.box_margin < 0:
            raise ConfigError("method.video: topk >= 1, 0 < mask_value <= 255 and box_margin >= 0 expected")
        if self.lost_objects not in LOST_OBJECTS:
            raise ConfigError(f"method.video.lost_objects={self.lost_objects!r}; valid: {', '.join(LOST_OBJECTS)}")


@dataclass(frozen=True)
class PerSAMVideoOptions(VideoOptions):
    """first_pick: the mask whose low-res logits feed the first refinement: ``uint8_area``
    (official: the three areas cast to uint8, i.e. modulo 256, then argmax), ``area``, ``score``."""

    first_pick: str = "uint8_area"

    def check(self) -> None:
        super().check()
        if self.first_pick not in FIRST_PICKS:
            raise ConfigError(f"method.video.first_pick={self.first_pick!r}; valid: {', '.join(FIRST_PICKS)}")


@dataclass(frozen=True)
class PerSAMFVideoOptions(VideoOptions):
    """empty_mix_pick: when the weighted mix is empty, the fallback mask is
    ``argmax(scores · w0)`` (``first_weight_score``, official: a negative first weight picks the
    lowest score) or ``argmax(scores)`` (``score``). iterations, lr, eps, weight_decay: the
    first-frame fit (official: 800, 4e-4, 1e-4, AdamW's default 0.01; cosine over iterations)."""

    topk: int = 1
    empty_mix_pick: str = "first_weight_score"
    iterations: int = 800
    lr: float = 4e-4
    eps: float = 1e-4
    weight_decay: float = 0.01

    def check(self) -> None:
        super().check()
        if self.empty_mix_pick not in EMPTY_MIX_PICKS:
            raise ConfigError(f"method.video.empty_mix_pick={self.empty_mix_pick!r}; valid: {', '.join(EMPTY_MIX_PICKS)}")
        if self.iterations < 0:
            raise ConfigError("method.video.iterations must be >= 0")


# ----- prompts: pure helpers ---------------------------------------------------------------------
def box_prompt(mask: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The official ``get_box_prompt`` of an H×W bool mask: its tight box expanded by ``margin``
    and clipped to 0 and to W / H (not W − 1) -> (centre 1×2 int64 ``((x0 + x1) // 2, (y0 + y1)
    // 2)``, box 1×4 int64 xyxy), or None for an empty mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    x0, y0 = max(int(xs.min()) - margin, 0), max(int(ys.min()) - margin, 0)
    x1, y1 = min(int(xs.max()) + margin, w), min(int(ys.max()) + margin, h)
    return torch.tensor([[(x0 + x1) // 2, (y0 + y1) // 2]]), torch.tensor([[x0, y0, x1, y1]])


def topk_points(sim: torch.Tensor, k: int) -> torch.Tensor:
    """The official ``point_selection``: ``topk`` of the flat H×W map (descending), each index ->
    (x = column, y = row) -> k×2 int64."""
    index = sim.flatten().topk(k).indices.cpu()
    return torch.stack([index % sim.shape[1], index // sim.shape[1]], dim=-1)


def first_pick(masks: torch.Tensor, scores: torch.Tensor, rule: str) -> int:
    """Index of the mask (masks 3×H×W bool, scores 3) whose logits feed PerSAM's first refinement."""
    if rule == "score":
        return int(np.argmax(scores.cpu().numpy()))
    areas = masks.flatten(1).sum(1).cpu().numpy()
    if rule == "uint8_area":
        areas = areas.astype(np.uint8)  # official np.array(..., dtype=np.uint8): wraps modulo 256
    return int(np.argmax(areas))


def merge_logits(logits: list[torch.Tensor], size) -> torch.Tensor:
    """Label map H×W uint8 of N objects' H×W logits: argmax over [0, logit_1, ..., logit_N]; the
    background wins ties and logits <= 0, the earlier object wins ties between objects."""
    labels = torch.zeros(size, dtype=torch.uint8)
    best = torch.zeros(size)
    for j, logit in enumerate(logits):
        logit = logit.cpu()
        wins = logit > best
        labels[wins] = j + 1
        best = torch.where(wins, logit, best)
    return labels


def next_box_masks(labels: torch.Tensor, previous: list[torch.Tensor | None], rule: str) -> list[torch.Tensor | None]:
    """The masks the next frame's boxes come from, one per tracked slot.

    ``official``: the masks of the labels present in ``labels`` (ascending, background
    excluded), as many as there are (``all_to_onehot``): a vanished object's slot goes to the
    next present label and the list shortens (the tracker then runs only that many objects).
    ``keep_last_box``: object j's own mask (label j + 1), or ``previous[j]`` when it is absent.
    """
    if rule == "official":
        present = [int(v) for v in torch.unique(labels) if int(v) != 0]
        return [labels == value for value in present]
    return [labels == j + 1 if bool((labels == j + 1).any()) else prev for j, prev in enumerate(previous)]


# ----- the trackers --------------------------------------------------------------------------------
@dataclass
class VideoObject:
    """One tracked object: target feature 1×256 (L2-normalised) and, for PerSAM-F, its weights."""

    target_feat: torch.Tensor
    scale_weights: MaskScaleWeights | None = None


class PerSAMVideo:
    """Training-free PerSAM on a video sample (``sample.frames``, ``sample.references`` one per
    object); ``track`` -> a Prediction with ``frame_labels`` T×H×W uint8 and the fallback count."""

    def __init__(self, *, sam, options: VideoOptions):
        self.sam, self.options = sam, options
        self.fallbacks = 0

    # ----- first frame -------------------------------------------------------------------------
    def reference_mask(self, mask: np.ndarray) -> np.ndarray:
        """H×W bool -> the official reference: red = ``mask_value`` on the object, green = blue = 0."""
        rgb = np.zeros((*mask.shape, 3), np.uint8)
        rgb[..., 0] = np.where(mask, self.options.mask_value, 0)
        return rgb

    def target_feature(self, embedding: torch.Tensor, mask: np.ndarray, name: str) -> torch.Tensor:
        """normalise((max + mean) / 2) of the object's 64×64 foreground cells (embedding
        256×64×64) -> 1×256. No cell left at 64×64 (official: NaN): the cell that holds most of
        the object's pixels stands in (:func:`~.prior.densest_cell`), counted as a fallback."""
        cells = reference_cells(self.sam, self.reference_mask(mask))
        if not bool(cells.any()):
            cells = densest_cell_mask(self.sam, mask, cells.shape[0])
            self.fallbacks += 1
            log.warning("PerSAM video: object %s has no foreground cell at 64×64; using its densest cell", name)
        fg = embedding.permute(1, 2, 0)[cells]
        return normalise((fg.max(0).values + fg.mean(0)) / 2)[None]

    def objects(self, sample: Sample, features, masks: list[torch.Tensor]) -> list[VideoObject]:
        embedding = features.embedding[0]
        return [VideoObject(self.target_feature(embedding, ref.mask, ref.name)) for ref in sample.references]

    # ----- one object in one frame ---------------------------------------------------------------
    def prompts(self, obj: VideoObject, embedding: torch.Tensor, size, box_mask: torch.Tensor):
        """(points 1×(k+1)×2 int64, labels 1×(k+1), box 1×4 int64): top-k points, the centre of
        the expanded previous box, that box."""
        sim = similarity_map(self.sam, obj.target_feat, embedding, size)
        prompt = box_prompt(box_mask, self.options.box_margin)
        if prompt is None:
            raise DatasetError("PerSAM video: an object's first-frame mask is empty")
        centre, box = prompt
        points = torch.cat([topk_points(sim, self.options.topk), centre])[None]
        return points, torch.ones(points.shape[:2], dtype=torch.long), box

    def predict(self, features, size, points, labels, boxes=None, mask_inputs=None):
        """One multimask decoder pass -> (logits 3×H×W, scores 3, low-res 3×256×256)."""
        logits, iou, low = self.sam.predict(features, size, points, labels, boxes=boxes, mask_inputs=mask_inputs,
                                            multimask_output=True, float64_coords=True)
        return logits[0], iou[0], low[0]

    def box_or_prompt_box(self, mask: torch.Tensor, prompt_box: torch.Tensor) -> torch.Tensor:
        """The refinement box of a mask; an empty mask (the official code crashes) -> the prompt box, counted."""
        box = mask_box(mask)
        if box is None:
            self.fallbacks += 1
            return prompt_box
        return box

    def refine(self, features, size, points, labels, prompt_box, mask, low) -> torch.Tensor:
        """The last pass: points + box of ``mask`` + ``low`` (256×256) -> the best H×W logits."""
        box = self.box_or_prompt_box(mask, prompt_box)
        logits, scores, _ = self.predict(features, size, points, labels, boxes=box, mask_inputs=low[None, None])
        return logits[int(scores.argmax())]

    def segment(self, obj: VideoObject, features, size, points, labels, box) -> torch.Tensor:
        """persam_video.py: points + box; the picked mask's low-res logits; + its box -> H×W logits."""
        logits, scores, low = self.predict(features, size, points, labels, boxes=box)
        pick = first_pick(logits > self.sam.mask_threshold, scores, self.options.first_pick)
        logits, scores, low = self.predict(features, size, points, labels, mask_inputs=low[pick][None, None])
        best = int(scores.argmax())
        return self.refine(features, size, points, labels, box, logits[best] > self.sam.mask_threshold, low[best])

    # ----- the video ---------------------------------------------------------------------------------
    def track(self, sample: Sample) -> Prediction:
        frames, references = sample.frames, sample.references
        object_ids = list(sample.meta.get("object_ids") or range(1, len(references) + 1))
        size = tuple(sample.image.shape[:2])
        self.fallbacks = 0
        masks = [torch.as_tensor(ref.mask) for ref in references]
        if not all(bool(m.any()) for m in masks):
            raise DatasetError(f"video {sample.meta.get('concept', sample.index)}: an object's first-frame mask is empty")
        objects = self.objects(sample, self.sam.embed_images([frames[0]]), masks)
        ids = torch.tensor([0, *object_ids], dtype=torch.uint8)
        out = torch.zeros((len(frames), *size), dtype=torch.uint8)
        for j, mask in enumerate(masks):
            out[0][mask] = ids[j + 1]
        box_masks: list[torch.Tensor | None] = masks
        for i in progress(range(1, len(frames)), desc=f"video {sample.meta.get('concept', '')}", rank=rank()):
            features = self.sam.embed_images([frames[i]])
            logits = []
            for obj, box_mask in zip(objects, box_masks):  # official: min(#objects, #boxes) objects
                points, labels, box = self.prompts(obj, features.embedding[0], size, box_mask)
                logits.append(self.segment(obj, features, size, points, labels, box))
            labels_map = merge_logits(logits, size)
            out[i] = ids[labels_map.long()]
            box_masks = next_box_masks(labels_map, box_masks, self.options.lost_objects)
        return Prediction(index=sample.index, frame_labels=out, fallbacks=self.fallbacks)


class PerSAMFVideo(PerSAMVideo):
    """PerSAM-F on video: per object two mask-scale weights fitted on the first frame, then the
    weighted mix of the three outputs replaces PerSAM's first pick (``persam_video_f.py``).

    ``weights_dir``: reuse ``<name>.pt`` files (name = the reference's name with ``/`` -> ``_``);
    ``save_dir``: save the fitted weights there.
    """

    def __init__(self, *, sam, options: PerSAMFVideoOptions, precompute_decoder: bool = True,
                 weights_dir: Path | None = None, save_dir: Path | None = None):
        super().__init__(sam=sam, options=options)
        self.precompute_decoder, self.weights_dir, self.save_dir = precompute_decoder, weights_dir, save_dir

    def objects(self, sample: Sample, features, masks: list[torch.Tensor]) -> list[VideoObject]:
        objects = super().objects(sample, features, masks)
        for obj, ref, mask in zip(objects, sample.references, masks):
            obj.scale_weights = self.load_or_fit(obj, features, mask, ref.name)
        return objects

    def load_or_fit(self, obj: VideoObject, features, mask: torch.Tensor, name: str) -> MaskScaleWeights:
        """Fit on the first frame: top-k points of its own similarity + the GT box centre, the GT
        box (expanded); target = the GT mask; dice + focal on the weighted full-res logits."""
        file_name = f"{name.replace('/', '_')}.pt"
        device = features.embedding.device
        if self.weights_dir and (self.weights_dir / file_name).is_file():
            saved = load_weights_file(self.weights_dir / file_name, "PerSAM-F video weights saved by sambench")
            weights = MaskScaleWeights().to(device)
            weights.weights.data.copy_(saved["weights"])
            return weights.eval()
        size = tuple(mask.shape)
        points, labels, box = self.prompts(obj, features.embedding[0], size, mask)

        @torch.no_grad()
        def decoder_maps() -> list[torch.Tensor]:
            return [self.predict(features, size, points, labels, boxes=box)[0]]

        o = self.options
        fitted = fit_scale_weights(decoder_maps() if self.precompute_decoder else decoder_maps, [mask.to(device)],
                                   iterations=o.iterations, lr=o.lr, eps=o.eps, weight_decay=o.weight_decay)
        if self.save_dir:
            save_atomic({"weights": fitted.weights.detach().cpu(), "reference": name}, self.save_dir / file_name)
        log.info("PerSAM-F video %s: weights %s", name, [round(w, 4) for w in fitted.weights.detach().tolist()])
        return fitted

    def segment(self, obj: VideoObject, features, size, points, labels, box) -> torch.Tensor:
        """persam_video_f.py: points + box; weighted mix (its mask's box, mixed low-res logits);
        + the best mask's box -> H×W logits."""
        logits, scores, low = self.predict(features, size, points, labels, boxes=box)
        weights = obj.scale_weights
        mask = weights(logits) > self.sam.mask_threshold
        if not bool(mask.any()):
            w = weights.weights
            first = 1 - (w[0] + w[1])
            ranked = scores * first if self.options.empty_mix_pick == "first_weight_score" else scores
            mask = logits[int(np.argmax(ranked.detach().cpu().numpy()))] > self.sam.mask_threshold
        mixed_low = weights(low)
        mask_box_ = self.box_or_prompt_box(mask, box)
        logits, scores, low = self.predict(features, size, points, labels, boxes=mask_box_, mask_inputs=mixed_low[None, None])
        best = int(scores.argmax())
        return self.refine(features, size, points, labels, box, logits[best] > self.sam.mask_threshold, low[best])
