"""SAM 3's prompts and outputs per task, as plain tensor functions (tested in isolation).

Shapes: C concepts, N decoder queries (instances) per concept, G ground-truth instances,
(h, w) SAM 3's low-resolution mask grid, (H, W) the original image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.ops import box_iou

from sambench.data.open_vocab import synonyms


#: how a class name becomes a text prompt: ``name`` verbatim (the sam3 package's COCO-JSON loader
#: prompts the category ``name``) | ``first_synonym`` (:func:`~sambench.data.open_vocab.synonyms`)
CONCEPT_NAMES = ("name", "first_synonym")


def concept_text(name: str, synonym_list: list[str] | None = None, rule: str = "name") -> str:
    """The text prompt of a class: the first of its listed synonyms (a ``class_names_file``), else
    its name verbatim (``rule="name"``) or its name's first synonym (``first_synonym``:
    ``'car_(automobile)'`` -> ``'car (automobile)'``, ``'couch,sofa'`` -> ``'couch'``)."""
    if synonym_list:
        return synonym_list[0]
    if rule == "first_synonym":
        return (synonyms(name) or [name])[0]
    return name


def concept_texts(class_names: list[str], synonym_lists: list[list[str]] | None = None, rule: str = "name") -> list[str]:
    """One text prompt per class id."""
    return [concept_text(name, synonym_lists[i] if synonym_lists else None, rule) for i, name in enumerate(class_names)]


def chunks(count: int, size: int) -> list[range]:
    """``range(count)`` in consecutive pieces of at most ``size`` (concepts per grounding pass)."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def box_matches(scores: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """GT-box protocol: how well each instance answers each GT box, ``score × IoU``.

    scores (C, N), boxes (C, N, 4) pixel xyxy, gt_boxes (G, 4) pixel xyxy -> (G, C, N)."""
    iou = box_iou(gt_boxes.float(), boxes.reshape(-1, 4).float()).view(len(gt_boxes), *scores.shape)
    return iou * scores[None].float()


def point_matches(scores: torch.Tensor, mask_logits: torch.Tensor, points: torch.Tensor,
                  size: tuple[int, int]) -> torch.Tensor:
    """Point protocol: ``score × mask probability at the point`` (the low-resolution logits read
    bilinearly at the point's position, as they would be after resizing to the image).

    scores (C, N), mask_logits (C, N, h, w), points (G, 2) pixel (x, y) in an image of ``size``
    -> (G, C, N)."""
    height, width = size
    # pixel centres (x + 0.5) / W in [0, 1] -> grid_sample's [-1, 1] with align_corners=False
    grid = torch.stack([(points[:, 0] + 0.5) / width, (points[:, 1] + 0.5) / height], dim=-1) * 2 - 1
    c, n, h, w = mask_logits.shape
    grid = grid.to(mask_logits.device, torch.float32).view(1, 1, -1, 2).expand(c * n, 1, -1, 2)
    sampled = torch.nn.functional.grid_sample(mask_logits.reshape(c * n, 1, h, w).float(), grid, mode="bilinear",
                                              padding_mode="border", align_corners=False)
    probability = sampled.view(c, n, -1).permute(2, 0, 1).sigmoid()  # (G, C, N)
    return probability * scores[None].float()


class BestPerPrompt:
    """Running best instance of each of G prompts over concept chunks: its match value, concept
    (class id), SAM 3 score and low-resolution mask logits."""

    def __init__(self, count: int):
        self.value = torch.full((count,), -1.0)
        self.class_id = torch.zeros(count, dtype=torch.long)
        self.score = torch.zeros(count)
        self.mask_logits: torch.Tensor | None = None  # (G, h, w)

    def update(self, matches: torch.Tensor, concepts: Sequence[int], scores: torch.Tensor,
               mask_logits: torch.Tensor) -> None:
        """matches (G, Cc, N) of the chunk's concepts; scores (Cc, N); mask_logits (Cc, N, h, w)."""
        if matches.shape[0] == 0:
            return
        flat = matches.flatten(1).cpu()
        value, where = flat.max(dim=1)
        concept, instance = where // matches.shape[2], where % matches.shape[2]
        if self.mask_logits is None:
            self.mask_logits = torch.zeros(len(value), *mask_logits.shape[-2:])  # float32, whatever the input precision
        better = value > self.value
        self.value = torch.where(better, value, self.value)
        self.class_id = torch.where(better, torch.as_tensor(list(concepts))[concept], self.class_id)
        self.score = torch.where(better, scores.cpu()[concept, instance].float(), self.score)
        chosen = mask_logits[concept.to(mask_logits.device), instance.to(mask_logits.device)].float().cpu()
        self.mask_logits[better] = chosen[better]


class TopDetections:
    """Running top-K instances over concept chunks (detector-free protocol): score, class id,
    normalised cxcywh box and low-resolution mask logits."""

    def __init__(self, max_detections: int, score_threshold: float = 0.0):
        self.max_detections, self.score_threshold = max_detections, score_threshold
        self.score = torch.zeros(0)
        self.class_id = torch.zeros(0, dtype=torch.long)
        self.boxes = torch.zeros(0, 4)
        self.mask_logits: torch.Tensor | None = None

    def update(self, concepts: Sequence[int], scores: torch.Tensor, boxes: torch.Tensor,
               mask_logits: torch.Tensor) -> None:
        """scores (Cc, N), boxes (Cc, N, 4), mask_logits (Cc, N, h, w) of the chunk's concepts."""
        flat = scores.flatten().float().cpu()
        keep = torch.nonzero(flat > self.score_threshold).flatten()
        keep = keep[flat[keep].argsort(descending=True, stable=True)[: self.max_detections]]
        n = scores.shape[1]
        ids = torch.as_tensor(list(concepts))[keep // n]
        logits = mask_logits.flatten(0, 1)[keep.to(mask_logits.device)].float().cpu()
        merged_logits = logits if self.mask_logits is None else torch.cat([self.mask_logits, logits])
        score = torch.cat([self.score, flat[keep]])
        order = score.argsort(descending=True, stable=True)[: self.max_detections]
        self.score, self.mask_logits = score[order], merged_logits[order]
        self.class_id = torch.cat([self.class_id, ids])[order]
        self.boxes = torch.cat([self.boxes, boxes.flatten(0, 1)[keep.to(boxes.device)].float().cpu()])[order]


def top_instance(scores: torch.Tensor) -> int:
    """The highest-scoring instance of one concept (scores (N,)); the first on ties."""
    return int(torch.argmax(scores))


def instance_score_map(scores: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel concept score from instances: max over instances of ``score × mask probability``.

    scores (C, N), mask_logits (C, N, h, w) -> (C, h, w)."""
    return (scores[..., None, None].float() * mask_logits.float().sigmoid()).amax(dim=1)


class BestConcept:
    """Running per-pixel argmax over concept chunks of (C, H, W) score maps: label map (H, W)."""

    def __init__(self, size: tuple[int, int]):
        self.value = torch.full(size, -float("inf"))
        self.label = torch.zeros(size, dtype=torch.long)

    def update(self, concepts: Sequence[int], score_maps: torch.Tensor) -> None:
        """score_maps (Cc, H, W) of the chunk's concepts (their class ids: ``concepts``)."""
        value, index = (part.cpu() for part in score_maps.float().max(dim=0))  # reduce on the device, copy (H, W)
        better = value > self.value  # strict: the lower class id wins ties, as argmax does
        self.value = torch.where(better, value, self.value)
        self.label = torch.where(better, torch.as_tensor(list(concepts))[index], self.label)
