"""SAM 3 (``sam3`` package): promptable concept segmentation from text or visual exemplars.

Unlike the other families, SAM 3 is not a promptable-mask backbone for an adaptation method: it
is the zero-shot reference model that ``method=sam3`` runs (``KIND = "concept"``). This wrapper
reproduces the official ``Sam3Processor`` step by step, batched over concepts:

* :meth:`preprocess` — the processor's transform: uint8 CHW, torchvision v2 ``Resize`` to
  ``resolution``² (bilinear, antialiased, on uint8), ``/255`` to float32, normalise with 0.5/0.5;
* :meth:`encode_image` / :meth:`encode_texts` — ``backbone.forward_image`` / ``forward_text``;
* :meth:`ground` — ``Sam3Image.forward_grounding`` for Q (image, concept) queries at once,
  re-composed from its upstream steps so a visual exemplar may come from another image;
* :class:`Grounding` scores, :meth:`masks_to_image`, :meth:`boxes_to_image` — the processor's
  output conversion: ``sigmoid(logit) · sigmoid(presence)``, mask logits resized bilinearly to
  the original size then ``sigmoid``, normalised cxcywh boxes to pixel xyxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sambench.backbones.registry import BACKBONES
from sambench.backbones.sam3_build import (
    RESOLUTION, build_sam3_image, detector_state, initialise_empty_tensors, runnable_here,
)
from sambench.errors import CheckpointError
from sambench.weights_file import check_weights_file, load_model_state

#: the released file of the image model (with the video tracker's tensors, which are not read)
OFFICIAL_FILE = "sam3.pt"
DOWNLOAD = "huggingface.co/facebook/sam3 (gated: accept the SAM License, then download sam3.pt)"
EXPECTED = f"{OFFICIAL_FILE} from {DOWNLOAD}"
#: the processor's normalisation (``v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3)``)
PIXEL_MEAN, PIXEL_STD = 0.5, 0.5
#: the text the processor encodes when a query has only a visual (geometric) prompt
VISUAL_ONLY_TEXT = "visual"


@dataclass
class Grounding:
    """SAM 3's answer to Q concept queries, before thresholds (N = the decoder's queries).

    Attributes:
        scores: (Q, N) ``sigmoid(logit) · sigmoid(presence)``, the processor's instance score.
        boxes: (Q, N, 4) normalised cxcywh in the model's square frame (= the original image, stretched).
        mask_logits: (Q, N, h, w) low-resolution mask logits (h = w = resolution / 3.5).
        presence: (Q,) ``sigmoid(presence logit)``: is the concept in the image at all.
        semantic_logits: (Q, h, w) the segmentation head's per-concept semantic logits.
    """

    scores: torch.Tensor
    boxes: torch.Tensor
    mask_logits: torch.Tensor
    presence: torch.Tensor
    semantic_logits: torch.Tensor


@BACKBONES.register_module(name="sam3")
class Sam3ConceptModel(nn.Module):
    """SAM 3's image model; weights from a local ``sam3.pt`` only (never the hub)."""

    FAMILY = "sam3"
    #: what this family is: ``concept`` models answer text/exemplar concepts (method=sam3 only)
    KIND = "concept"
    CAPABILITIES: frozenset[str] = frozenset()
    #: attribute of the upstream ``Sam3Image`` (private: methods use this wrapper's members)
    RAW = "sam3"

    def __init__(self, *, name: str, variant: str = "sam3", checkpoint: str | None = None,
                 allow_random_init: bool = False, init_seed: int = 0, bpe_path: str | None = None,
                 cache_dir: str | None = None):  # no feature cache: SAM 3's grounding re-reads the FPN per concept
        super().__init__()
        if variant == "sam3" and checkpoint is None and not allow_random_init:
            raise CheckpointError(f"backbone {name} needs SAM 3's weights: download {OFFICIAL_FILE} from {DOWNLOAD} "
                                  f"and pass backbone.checkpoint=<path to it>")
        self.name, self.variant, self.checkpoint = name, variant, checkpoint
        if checkpoint is not None:  # before building 840 M parameters
            check_weights_file(Path(checkpoint).expanduser(), EXPECTED)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_sam3_image(variant, bpe_path)
            if checkpoint is None and not _on_meta(model):
                initialise_empty_tensors(model)
        if checkpoint is not None:
            load_sam3_weights(model, checkpoint, name)
        self.add_module(self.RAW, model)
        self.requires_grad_(False)  # used zero-shot: nothing here trains SAM 3
        self.resolution = RESOLUTION[variant]
        self._texts: dict[tuple[str, ...], dict] = {}  # the last vocabulary's encodings

    @classmethod
    def capabilities_for(cls, variant: str | None) -> frozenset[str]:
        return cls.CAPABILITIES

    def _raw_model(self):
        """The upstream ``Sam3Image`` (reference tests and key layouts only)."""
        return self._modules[self.RAW]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----- input ------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, R, R) float32 on the model's device, as the processor does
        (resize on uint8 in torchvision v2, then scale and normalise)."""
        from torchvision.transforms import v2
        pixels = v2.functional.to_image(np.ascontiguousarray(image)).to(self.device)
        pixels = v2.functional.resize(pixels, [self.resolution, self.resolution])  # bilinear, antialias
        pixels = v2.functional.to_dtype(pixels, torch.float32, scale=True)
        return v2.functional.normalize(pixels, mean=[PIXEL_MEAN] * 3, std=[PIXEL_STD] * 3)

    @torch.inference_mode()
    def encode_image(self, pixels: torch.Tensor) -> dict:
        """(B, 3, R, R) -> upstream's ``backbone_out`` (FPN levels and position encodings)."""
        with runnable_here():
            return self._raw_model().backbone.forward_image(pixels)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> dict:
        """T texts -> ``language_features`` (L, T, C), ``language_mask`` (T, L), ``language_embeds``;
        the last vocabulary's encodings are kept (a dataset's class names are encoded once)."""
        key = tuple(texts)
        if key not in self._texts:
            with runnable_here():
                encoded = self._raw_model().backbone.forward_text(list(texts), device=self.device)
            self._texts = {key: encoded}
        return self._texts[key]

    # ----- grounding --------------------------------------------------------------------------
    @torch.inference_mode()
    def ground(self, image: dict, texts: dict, text_ids: torch.Tensor, image_ids: torch.Tensor | None = None,
               exemplars: tuple[torch.Tensor, torch.Tensor] | None = None) -> Grounding:
        """Q queries: image ``image_ids[q]`` (default 0) of ``image`` with text ``text_ids[q]``
        of ``texts`` and, optionally, exemplar prompt tokens (:meth:`encode_exemplars`: (K, Q, C)
        tokens, (Q, K) padding mask) in place of the (empty) geometric prompt."""
        model = self._raw_model()
        text_ids = text_ids.to(self.device)
        image_ids = torch.zeros_like(text_ids) if image_ids is None else image_ids.to(self.device)
        find = _find_stage(image_ids, text_ids)
        backbone_out = {**image, **texts}
        with runnable_here():
            prompt, prompt_mask, backbone_out = model._encode_prompt(
                backbone_out, find, model._get_dummy_prompt(len(text_ids)))
            if exemplars is not None:  # the text tokens, then the exemplar's (as a same-image box prompt would be)
                length = texts["language_mask"].shape[1]
                prompt = torch.cat([prompt[:length], exemplars[0]], dim=0)
                prompt_mask = torch.cat([prompt_mask[:, :length], exemplars[1]], dim=1)
            backbone_out, encoder_out, _ = model._run_encoder(backbone_out, find, prompt, prompt_mask)
            out = {"encoder_hidden_states": encoder_out["encoder_hidden_states"]}
            out, hs = model._run_decoder(memory=out["encoder_hidden_states"], pos_embed=encoder_out["pos_embed"],
                                         src_mask=encoder_out["padding_mask"], out=out, prompt=prompt,
                                         prompt_mask=prompt_mask, encoder_out=encoder_out)
            model._run_segmentation_heads(out=out, backbone_out=backbone_out, img_ids=find.img_ids,
                                          vis_feat_sizes=encoder_out["vis_feat_sizes"],
                                          encoder_hidden_states=out["encoder_hidden_states"], prompt=prompt,
                                          prompt_mask=prompt_mask, hs=hs)
        presence = out["presence_logit_dec"].sigmoid()  # (Q, 1)
        scores = (out["pred_logits"].sigmoid() * presence.unsqueeze(1)).squeeze(-1)
        return Grounding(scores=scores, boxes=out["pred_boxes"], mask_logits=out["pred_masks"],
                         presence=presence.squeeze(-1), semantic_logits=out["semantic_seg"][:, 0])

    @torch.inference_mode()
    def encode_exemplars(self, image: dict, boxes: torch.Tensor, labels: torch.Tensor | None = None,
                         image_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Exemplar boxes (K, 4) normalised cxcywh on image ``image_index`` of ``image`` (labels:
        True = positive, default all) -> geometry-encoder tokens (K + 1, 1, C) and their padding
        mask (1, K + 1), pooled from that image's features: usable on any other image."""
        from sam3.model.geometry_encoders import Prompt
        model = self._raw_model()
        boxes = boxes.to(self.device, torch.float32).view(-1, 1, 4)
        labels = torch.ones(len(boxes), 1, dtype=torch.bool, device=self.device) if labels is None \
            else labels.to(self.device, torch.bool).view(-1, 1)
        prompt = Prompt(box_embeddings=boxes, box_mask=torch.zeros(1, len(boxes), dtype=torch.bool, device=self.device),
                        box_labels=labels)
        ids = torch.tensor([image_index], device=self.device)
        with runnable_here():
            _, feats, pos, sizes = model._get_img_feats(image, ids)
            return model.geometry_encoder(geo_prompt=prompt, img_feats=feats, img_sizes=sizes, img_pos_embeds=pos)

    # ----- output -----------------------------------------------------------------------------
    @staticmethod
    def masks_to_image(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(K, h, w) logits -> (K, H, W) probabilities: bilinear resize, then sigmoid (processor order)."""
        if len(mask_logits) == 0:
            return mask_logits.new_zeros((0, *size))
        return F.interpolate(mask_logits[:, None].float(), size, mode="bilinear", align_corners=False)[:, 0].sigmoid()

    @staticmethod
    def boxes_to_image(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(..., 4) normalised cxcywh -> pixel xyxy in an image of ``size`` = (H, W)."""
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        height, width = size
        return xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype, device=xyxy.device)

    @staticmethod
    def boxes_to_exemplars(boxes_xyxy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(K, 4) pixel xyxy in an image of ``size`` -> normalised cxcywh (the processor's box prompt)."""
        height, width = size
        x0, y0, x1, y1 = (boxes_xyxy.double() / torch.tensor([width, height, width, height])).unbind(-1)
        return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1).float()


def _find_stage(image_ids: torch.Tensor, text_ids: torch.Tensor):
    from sam3.model.data_misc import FindStage
    return FindStage(img_ids=image_ids.long(), text_ids=text_ids.long(), input_boxes=None, input_boxes_mask=None,
                     input_boxes_label=None, input_points=None, input_points_mask=None)


def _on_meta(model: nn.Module) -> bool:
    return next(model.parameters()).is_meta


def load_sam3_weights(model: nn.Module, checkpoint: str, name: str) -> None:
    """The image model's tensors of a released ``sam3.pt`` (keys ``detector.*``), strictly: a
    file that lacks them, or holds another model, is a one-line error naming the file."""
    load_model_state(model, checkpoint, model_name=f"SAM 3 ({name})", select=detector_state, expected=EXPECTED,
                     hint=_which_file)


def _which_file(state: dict) -> str:
    """What a file that does not fit holds instead (for the error message)."""
    keys = list(state)
    if any(key.startswith("tracker.") for key in keys) and not any(key.startswith("detector.") for key in keys):
        return " (it holds only SAM 3's video tracker: tracker.* keys, no detector.*)"
    if any(key.startswith(("image_encoder.", "mask_decoder.")) for key in keys):
        return " (it looks like a SAM / HQ-SAM file: image_encoder.* keys)"
    return ""


def official_key_layout(model: nn.Module) -> list[str]:
    """The keys a released ``sam3.pt`` holds for ``model`` (``detector.`` + the image model's keys)."""
    return [f"detector.{key}" for key in model.state_dict()]


