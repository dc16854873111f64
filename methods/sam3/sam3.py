"""SAM 3 zero-shot: the reference row of every task, from the official ``sam3`` package.

One method, one adapter per task (picked by the dataset: ``TASKS``); every adapter forms SAM 3
prompts from the sample and converts SAM 3's instances into the task's prediction, so the
same evaluators score it as the adapted methods. The prompt-formation choices are listed in
``methods/sam3/README.md``.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from sambench import tasks
from sambench.backbones.sam3 import VISUAL_ONLY_TEXT
from sambench.errors import ConfigError, DatasetError
from sambench.evaluation.open_vocab import instance_outputs
from sambench.method import SambenchMethod
from sambench.prompts import interior_points, mask_boxes
from sambench.registry import METHODS
from sambench.structures import Batch, Detection, Prediction, Sample

from .concepts import (
    CONCEPT_NAMES, BestConcept, BestPerPrompt, TopDetections, box_matches, chunks, concept_text, concept_texts, instance_score_map,
    point_matches, top_instance,
)

#: open-vocabulary protocols: recognise the GT box / point's instance, or detect (mask AP)
PROTOCOLS = ("box", "point", "detector_free")
#: detector-free concepts per image: every class, or (LVIS) those its evaluation scores there
CONCEPT_SETS = ("all", "verified")
#: where the semantic adapter's per-pixel concept scores come from
SEMANTIC_SCORES = ("semantic_head", "instances")
#: SAM 3's mask threshold on probabilities (``Sam3Processor``: ``masks > 0.5``)
MASK_THRESHOLD = 0.5


@METHODS.register_module(name="sam3")
class Sam3ZeroShot(SambenchMethod):
    """SAM 3 used zero-shot (no training), on instances, referring, personalisation and semantic data.

    Args:
        sam: the SAM 3 concept model (``backbone=sam3`` / ``sam3_tiny``).
        task: the task the dataset serves (set by the composition root).
        protocol: open-vocabulary instances: ``box`` (each GT box gets the class and mask of the
            instance with the best ``score × IoU``), ``point`` (each GT instance's interior point:
            best ``score × mask probability at the point``) or ``detector_free`` (SAM 3's own
            instances over all class names -> mask AP).
        concept_batch: concepts grounded per pass (memory: ~``concept_batch × 200`` masks of 288²).
        max_detections: detector-free: instances kept per image (COCO 100, LVIS 300).
        score_threshold: detector-free: instances with a lower score are dropped (0: keep all for AP).
        semantic_scores: semantic: ``semantic_head`` (the segmentation head's per-concept map) or
            ``instances`` (max over the concept's instances of score × mask probability).
        exemplar_text: personalisation: the text beside the reference box exemplar (the
            processor's ``visual`` for exemplar-only prompts; ``class_name``: the concept's folder name).
        concept_names: class name -> text prompt: ``name`` verbatim (the package's COCO-JSON
            loader) or ``first_synonym``; a dataset's ``class_names_file`` wins (its first synonym).
        concepts: detector-free: ``all`` classes on every image, or ``verified`` (LVIS only): the
            classes the LVIS evaluation scores on that image (its annotations' and its
            ``neg_category_ids``), ~60× fewer grounding passes; the others' detections are
            ignored by the evaluation anyway, but no longer compete for ``max_detections``.
    """

    TASKS = (tasks.OPEN_VOCAB_INSTANCE, tasks.REFERRING, tasks.PERSONALIZE, tasks.SEMANTIC_FEW_SHOT, tasks.VIDEO_OBJECT)
    BACKBONE_KIND = "concept"
    ROOT_KWARGS = ("task",)

    def __init__(self, *, sam, task=None, protocol: str = "box", concept_batch: int = 8, max_detections: int = 100,
                 score_threshold: float = 0.0, semantic_scores: str = "semantic_head", exemplar_text: str = "visual",
                 concept_names: str = "name", concepts: str = "all"):
        super().__init__()
        for option, value, valid in (("protocol", protocol, PROTOCOLS), ("semantic_scores", semantic_scores, SEMANTIC_SCORES),
                                     ("exemplar_text", exemplar_text, ("visual", "class_name")),
                                     ("concept_names", concept_names, CONCEPT_NAMES),
                                     ("concepts", concepts, CONCEPT_SETS)):
            if value not in valid:
                raise ConfigError(f"unknown method.{option} '{value}'; valid: {', '.join(valid)}")
        if concept_batch < 1 or max_detections < 1:
            raise ConfigError("method.concept_batch and method.max_detections must be >= 1")
        if concepts == "verified" and protocol != "detector_free":
            raise ConfigError(f"method.concepts=verified is for method.protocol=detector_free (with protocol={protocol} "
                              "it would hand the GT classes to the recognition); use concepts=all")
        self.sam, self.TASK = sam, task or tasks.OPEN_VOCAB_INSTANCE
        self.protocol, self.concept_batch, self.max_detections = protocol, concept_batch, max_detections
        self.score_threshold, self.semantic_scores, self.exemplar_text = score_threshold, semantic_scores, exemplar_text
        self.concept_names, self.concepts = concept_names, concepts
        self._exemplars: dict[str, tuple] = {}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        adapter = {tasks.OPEN_VOCAB_INSTANCE: self.open_vocab, tasks.REFERRING: self.referring,
                   tasks.PERSONALIZE: self.personalize, tasks.SEMANTIC_FEW_SHOT: self.semantic,
                   tasks.VIDEO_OBJECT: self.video}[self.TASK]
        return [adapter(sample) for sample in batch]

    def _image(self, image) -> dict:
        return self.sam.encode_image(self.sam.preprocess(image)[None])

    def _grounded_chunks(self, image: dict, texts: list[str], class_ids: list[int] | None = None):
        """(class ids, Grounding) per ``concept_batch`` concepts on one image: every text of
        ``texts`` (the vocabulary, encoded once), or only those of ``class_ids``."""
        encoded = self.sam.encode_texts(texts)
        ids = list(range(len(texts))) if class_ids is None else list(class_ids)
        for part in chunks(len(ids), self.concept_batch):
            concepts = [ids[i] for i in part]
            yield concepts, self.sam.ground(image, encoded, torch.tensor(concepts))

    def _masks(self, mask_logits: torch.Tensor, size) -> torch.Tensor:
        """(K, h, w) logits -> (K, H, W) bool at the original size (processor: resize, sigmoid, > 0.5)."""
        return (self.sam.masks_to_image(mask_logits.to(self.sam.device), size) > MASK_THRESHOLD).cpu()

    # ----- open-vocabulary instances ----------------------------------------------------------
    def open_vocab(self, sample: Sample) -> Prediction:
        texts = concept_texts(sample.class_names, sample.meta.get("synonym_lists"), self.concept_names)
        image = self._image(sample.image)
        if self.protocol == "detector_free":
            return self._detections(sample, image, texts)
        if self.protocol == "box":
            prompts = (sample.boxes if sample.boxes is not None else mask_boxes(sample.masks)).float()
        else:
            prompts = interior_points(sample.masks)[:, 0]
        best = BestPerPrompt(len(prompts))
        if len(prompts):
            for concepts, out in self._grounded_chunks(image, texts):
                if self.protocol == "box":
                    boxes = self.sam.boxes_to_image(out.boxes, sample.size)
                    matches = box_matches(out.scores, boxes, prompts.to(boxes.device))
                else:
                    matches = point_matches(out.scores, out.mask_logits, prompts, sample.size)
                best.update(matches, concepts, out.scores, out.mask_logits)
        masks = self._masks(best.mask_logits, sample.size) if best.mask_logits is not None \
            else torch.zeros(0, *sample.size, dtype=torch.bool)
        return Prediction(index=sample.index, masks=masks, class_ids=best.class_id, scores=best.score,
                          **instance_outputs(sample, best.class_id, best.score))

    def _detections(self, sample: Sample, image: dict, texts: list[str]) -> Prediction:
        top = TopDetections(self.max_detections, self.score_threshold)
        for concepts, out in self._grounded_chunks(image, texts, self._verified(sample)):
            top.update(concepts, out.scores, out.boxes, out.mask_logits)
        if top.mask_logits is None or not len(top.score):
            return Prediction(index=sample.index, detections=[])
        masks = self._masks(top.mask_logits, sample.size)
        boxes = self.sam.boxes_to_image(top.boxes, sample.size).tolist()
        return Prediction(index=sample.index, detections=[
            Detection(bbox=box, score=float(score), class_id=int(class_id), mask=mask)
            for box, score, class_id, mask in zip(boxes, top.score.tolist(), top.class_id.tolist(), masks)])

    def _verified(self, sample: Sample) -> list[int] | None:
        """``concepts=verified``: the classes of the image's annotations and its LVIS negatives."""
        if self.concepts == "all":
            return None
        negatives = sample.meta.get("neg_class_ids")
        if negatives is None:
            raise ConfigError("method.concepts=verified needs a federated dataset (LVIS: neg_category_ids per image); "
                              f"sample {sample.meta.get('file_name', sample.index)} has none (COCO is exhaustively "
                              "annotated: use method.concepts=all)")
        present = [] if sample.class_ids is None else sample.class_ids.tolist()
        return sorted(set(present) | set(negatives))

    # ----- referring --------------------------------------------------------------------------
    def referring(self, sample: Sample) -> Prediction:
        """The expression as the text prompt; the top-scoring instance's mask."""
        image = self._image(sample.image)
        out = self.sam.ground(image, self.sam.encode_texts([sample.texts[0]]), torch.tensor([0]))
        best = top_instance(out.scores[0])
        return Prediction(index=sample.index, masks=self._masks(out.mask_logits[0, best][None], sample.size))

    # ----- personalisation --------------------------------------------------------------------
    def personalize(self, sample: Sample) -> Prediction:
        """The first reference's mask box as a positive exemplar (encoded on the reference image);
        the target's top-scoring instance."""
        reference = sample.references[0]
        exemplar = self._exemplar(reference)
        out = self.sam.ground(self._image(sample.image), self.sam.encode_texts([self._exemplar_text(sample, reference)]),
                              torch.tensor([0]), exemplars=exemplar)
        best = top_instance(out.scores[0])
        return Prediction(index=sample.index, masks=self._masks(out.mask_logits[0, best][None], sample.size))

    def _exemplar_text(self, sample: Sample, reference) -> str:
        """The text beside an exemplar: the processor's visual-only text, or the concept's name (the
        dataset's ``meta["object"]``, e.g. a one-shot episode's class, else the reference's
        folder: ``"cat_statue/00"`` -> ``"cat statue"``)."""
        if self.exemplar_text == "visual":
            return VISUAL_ONLY_TEXT
        name = sample.meta.get("object") if self.TASK == tasks.PERSONALIZE else None
        return concept_text(str(name or reference.name.split("/")[0]), rule="first_synonym")

    # ----- video objects ----------------------------------------------------------------------
    def video(self, sample: Sample) -> Prediction:
        """Each object's first-frame mask box is its exemplar (encoded on frame 0); on every later
        frame each object's top-scoring instance gives a probability map, and a pixel takes the
        object with the highest probability above 0.5 (background otherwise; the lower id on ties).
        No memory across frames: a per-frame exemplar baseline, not SAM 3's video tracker.
        Frame 0 holds the given first-frame masks."""
        ids = list(sample.meta.get("object_ids") or range(1, len(sample.references) + 1))
        height, width = sample.size
        exemplars = [self._exemplar(reference) for reference in sample.references]
        labels = torch.zeros(len(sample.frames), height, width, dtype=torch.uint8)
        for object_id, reference in zip(ids, sample.references):
            labels[0][torch.as_tensor(reference.mask)] = object_id
        texts = self.sam.encode_texts([self._exemplar_text(sample, ref) for ref in sample.references])
        for t in range(1, len(sample.frames)):
            image = self._image(sample.frames[t])
            maps = [torch.full((height, width), MASK_THRESHOLD)]
            for k, exemplar in enumerate(exemplars):
                out = self.sam.ground(image, texts, torch.tensor([k]), exemplars=exemplar)
                best = top_instance(out.scores[0])
                maps.append(self.sam.masks_to_image(out.mask_logits[0, best][None].to(self.sam.device), (height, width))[0].cpu())
            winner = torch.stack(maps).argmax(0)
            labels[t] = torch.tensor([0, *ids], dtype=torch.uint8)[winner]
        return Prediction(index=sample.index, frame_labels=labels)

    def _exemplar(self, reference):
        """Exemplar tokens of a reference (cached by its name and mask: a concept's targets share it,
        and one image used as the reference of several classes gets one exemplar per mask)."""
        key = (reference.name or str(id(reference)), hashlib.sha1(np.packbits(reference.mask)).hexdigest())
        if key not in self._exemplars:
            if not reference.mask.any():
                raise DatasetError(f"reference {reference.name or '?'}: its mask is empty, so SAM 3 has no exemplar box "
                                   "(expected a mask with a foreground object)")
            box = mask_boxes(torch.as_tensor(reference.mask)[None])
            size = reference.mask.shape[:2]
            self._exemplars = {key: self.sam.encode_exemplars(self._image(reference.image),
                                                              self.sam.boxes_to_exemplars(box, size))}
        return self._exemplars[key]

    # ----- semantic ---------------------------------------------------------------------------
    def semantic(self, sample: Sample) -> Prediction:
        """Every class name as a concept; per pixel, the concept with the highest score."""
        texts = concept_texts(sample.class_names, rule=self.concept_names)
        best = BestConcept(sample.size)
        for concepts, out in self._grounded_chunks(self._image(sample.image), texts):
            if self.semantic_scores == "semantic_head":
                logits = out.semantic_logits
            else:  # probabilities -> logits, so the map is resized as every SAM 3 map is (logits, then sigmoid)
                logits = torch.logit(instance_score_map(out.scores, out.mask_logits).clamp(1e-6, 1 - 1e-6))
            best.update(concepts, self.sam.masks_to_image(logits, sample.size))
        return Prediction(index=sample.index, semantic=best.label)

