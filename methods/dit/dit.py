"""DIT-SAM (deep instruction tuning, E-DIT and L-DIT) and the text-prompt SAM baselines.

One model, four registered names (see ``methods/dit/README.md`` for the paper and code details):

- ``dit_e2e`` / ``dit_layerwise``: BERT tokens projected into every block of SAM's ViT
  (:mod:`methods.dit.injection`) at 512² input, plus the same tokens as sparse prompts;
- ``sam_text``: "Default SAM" — the text only as sparse prompts to the original decoder;
- ``sam_text_declayers``: the same with 2 or 4 extra two-way decoder layers.

Each runs with the image encoder trained or frozen (the paper's ``*`` rows). Forward:
text -> BERT features B×20×D; image -> 512² canvas -> ViT (with or without text tokens) ->
B×256×32×32; sparse prompts Linear(D→256)(features), dense = SAM's ``no_mask_embed`` ->
single-mask decoder -> B×1×128×128 logits -> bilinear ×4 (align_corners) -> B×1×512×512.
Loss: BCE with logits against the letterboxed mask. Prediction: sigmoid > ``threshold`` at
512², crop the image region, resize bilinearly to the original size, > 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sambench import tasks
from sambench.backbones.interface import TOKEN_INJECTION, TWO_WAY_TRANSFORMER_FN
from sambench.backbones.joint_attention import joint_block
from sambench.backbones.text import BertTextEncoder
from sambench.errors import ConfigError
from .decoder_layers import ExtraDecoderLayers
from .injection import ATTENTION, TextInjection
from .preprocess import ReferringPreprocessor, unletterbox
from sambench.method import SambenchMethod
from .official_checkpoint import export_official_dit, import_official_dit
from sambench.registry import METHODS, register_preset
from sambench.structures import Batch, Prediction

INJECTIONS = ("none", "e2e", "layerwise")


class TextInstructedSam(SambenchMethod):
    """Referring segmentation with SAM and a BERT text encoder.

    Args:
        sam: the wrapped SAM backbone (its ViT runs at ``image_size``).
        text_encoder: :class:`BertTextEncoder` keyword arguments (path, layer, trainable, ...).
        injection: ``e2e`` | ``layerwise`` (DIT) | ``none`` (text only as decoder prompts).
        train_image_encoder: false = the paper's ``*`` rows (ViT frozen; injections still train).
        attention: ``global`` (official: no windows, every block over [text ; image]) or
            ``windowed`` (SAM's windowed blocks kept).
        mask_text_padding: hide padded text tokens from the ViT's attention (official: no).
        projection_dropout: dropout after each DIT projection (official 0.1).
        extra_decoder_layers: 0, 2 or 4 new two-way decoder layers (baseline rows).
        image_size: canvas side (official 512); threshold: on sigmoid at that size (0.35).
        augment: :class:`ReferringPreprocessor` options for training.
        image_pipeline: ``official`` (PIL in uint8, as the official code) or ``tensor`` (device
            tensors, faster with few CPU cores, not bit-faithful); see ``methods/dit/README.md``.
        official_checkpoint: a DIT file released by the authors (``{'state_dict': ...}``),
            loaded once the model is built; it fills every tensor (SAM, BERT, projections), so
            without ``text_encoder.path`` a random bert-base-sized BERT is built for it (only a
            ``text_encoder.tokenizer`` is needed). See ``methods/dit/README.md`` "Official checkpoints".
    """

    TASK = tasks.REFERRING
    REQUIRES = frozenset({TOKEN_INJECTION})

    def __init__(
        self, *, sam, text_encoder: dict | None = None, injection: str = "none", train_image_encoder: bool = True,
        attention: str = "global", mask_text_padding: bool = False, projection_dropout: float = 0.1,
        extra_decoder_layers: int = 0, image_size: int = 512, threshold: float = 0.35, augment: dict | None = None,
        image_pipeline: str = "official", official_checkpoint: str | None = None,
    ):
        super().__init__()
        if injection not in INJECTIONS:
            raise ConfigError(f"unknown method.injection '{injection}'; valid: {', '.join(INJECTIONS)}")
        if attention not in ATTENTION:
            raise ConfigError(f"unknown method.attention '{attention}'; valid: {', '.join(ATTENTION)}")
        if image_size % 16 or image_size > sam.image_size:
            raise ConfigError(f"method.image_size={image_size}: must be a multiple of 16 and at most SAM's {sam.image_size}")
        self.sam, self.attention, self.mask_text_padding = sam, attention, mask_text_padding
        self.image_size, self.threshold = image_size, threshold
        text_encoder = dict(text_encoder or {})
        if official_checkpoint is not None and text_encoder.get("path") is None:
            # the file holds the whole fine-tuned BERT: build bert-base's architecture without weights
            text_encoder.update(size=text_encoder.get("size") or "bert-base", allow_random_init=True)
        self.text = BertTextEncoder(**text_encoder)
        encoder = sam.encoder_spec()
        self.text_proj = nn.Linear(self.text.dim, sam.embed_dim)
        self.injection = None
        if injection != "none":
            self.injection = TextInjection(mode=injection, depth=encoder.depth, text_dim=self.text.dim,
                                           vision_dim=encoder.width, dropout=projection_dropout)
        self.extra_layers = ExtraDecoderLayers(num_layers=extra_decoder_layers) if extra_decoder_layers else None
        self.preprocess = ReferringPreprocessor(size=image_size, pipeline=image_pipeline, **(augment or {}))
        self._set_trainable(train_image_encoder)
        if official_checkpoint is not None:  # after the model is built: every tensor must be filled
            import_official_dit(self, official_checkpoint)

    def _set_trainable(self, train_image_encoder: bool) -> None:
        """Only parameters on the forward path train (DDP needs every trainable one used)."""
        self.sam.set_trainable(image_encoder=train_image_encoder, no_mask_embed=True, mask_decoder=True,
                               iou_head=False)  # the IoU head is computed by the decoder, never used

    def peft_parts(self) -> dict[str, str]:
        """``text_encoder``: the BERT (``method.peft.freeze=[text_encoder]``)."""
        return {"text_encoder": r"text\.bert\..*"}

    def peft_targets(self) -> dict[str, str]:
        """``text_attention``: the attention layers of the BERT blocks that feed the chosen
        hidden state (``text_encoder.layer``; blocks above it get no gradient)."""
        if self.text.layer == 0:
            return {}
        blocks = "|".join(str(i) for i in range(self.text.layer))
        return {"text_attention": rf"text\.bert\.encoder\.layer\.({blocks})\.attention\.(self\.(query|key|value)|output\.dense)"}

    # ----- forward ----------------------------------------------------------------------------
    def logits(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """pixels B×3×S×S (normalised canvases), B expressions -> mask logits B×1×S×S."""
        features, mask = self.text(texts)
        block_fn = None
        if self.injection is not None:
            block_fn = self.injection.block_fn(features, mask if self.mask_text_padding else None, self.attention)
        elif self.attention == "global":  # the official encoder without text: no windows either
            block_fn = _global_block
        image = self.sam.encode_features(pixels, block_fn)  # embedding B×256×h×w (+ HQ-SAM's early ViT level)
        sparse = self.text_proj(features)  # B×T×256 (padding tokens included, as official)
        dense = self.sam.no_mask_embedding(len(texts), tuple(image.embedding.shape[-2:]))
        low_res, _ = self.sam.decode(image, sparse, dense, multimask_output=False, transformer_fn=self.extra_layers)
        return F.interpolate(low_res, size=pixels.shape[-2:], mode="bilinear", align_corners=True)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """BCE with logits against the letterboxed (soft) GT mask; one random expression each."""
        device = self.text_proj.weight.device
        canvases, targets, texts = [], [], []
        for sample in batch:
            text = sample.texts[int(torch.randint(len(sample.texts), ()))]
            canvas, target, text = self.preprocess.training(sample.image, sample.masks[0], text, device)
            canvases.append(canvas)
            targets.append(target)
            texts.append(text)
        logits = self.logits(torch.cat(canvases), texts)
        return {"loss_bce": F.binary_cross_entropy_with_logits(logits, torch.cat(targets))}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Prediction]:
        """One 1×H×W bool mask per sample (its single expression); ``logits`` keeps the
        512×512 float32 logits before the threshold (for comparison with other code)."""
        device = self.text_proj.weight.device
        prepared = [self.preprocess.evaluation(sample.image, device) for sample in batch]
        logits = self.logits(torch.cat([canvas for canvas, _ in prepared]), [sample.texts[0] for sample in batch])
        predictions = []
        for sample, (_, where), sample_logits in zip(batch, prepared, logits):
            binary = (sample_logits[None].float().sigmoid() > self.threshold).float()
            mask = unletterbox(binary, where, sample.size)[0] > 0  # 1×H×W
            predictions.append(Prediction(index=sample.index, masks=mask.cpu(), logits=sample_logits[0].float().cpu()))
        return predictions

    def official_files(self, *, name: str, backbone: str, dataset: str, ddp_prefix: bool = False) -> dict[str, dict]:
        """``dit_<name>.pth`` (``{'epoch', 'state_dict', 'lr'}``) for L-DIT / E-DIT; the text-prompt
        baselines have no released layout."""
        if self.injection is None:  # text only as decoder prompts
            return super().official_files(name=name, backbone=backbone, dataset=dataset, ddp_prefix=ddp_prefix)
        return {f"dit_{name}.pth": export_official_dit(self, ddp_prefix=ddp_prefix)}


def _global_block(index, block, image):
    """An upstream block with its windows removed (the official DIT encoder, no text)."""
    return joint_block(block, None, image)[1]


register_preset(METHODS, "dit_layerwise", TextInstructedSam, defaults=dict(injection="layerwise"),
                doc="L-DIT: the original text features re-projected into every ViT block.")
register_preset(METHODS, "dit_e2e", TextInstructedSam, defaults=dict(injection="e2e"),
                doc="E-DIT: text tokens projected in before block 0 and carried through the blocks.")
register_preset(METHODS, "sam_text", TextInstructedSam, defaults=dict(injection="none"),
                doc="Default SAM with text: BERT tokens only as sparse prompts to SAM's own decoder.")


@METHODS.register_module(name="sam_text_declayers")
class SamTextDecoderLayers(TextInstructedSam):
    """Default SAM with text and 2 (default) or 4 extra decoder layers."""

    REQUIRES = frozenset({TOKEN_INJECTION, TWO_WAY_TRANSFORMER_FN})

    def __init__(self, *, extra_decoder_layers: int = 2, **kwargs):
        if extra_decoder_layers not in (2, 4):
            raise ConfigError(f"method.extra_decoder_layers={extra_decoder_layers}; the paper's baselines use 2 or 4")
        super().__init__(extra_decoder_layers=extra_decoder_layers, **kwargs)
