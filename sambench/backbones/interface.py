"""The backbone interface: everything a method may ask of a promptable segmentation model.

Methods hold a :class:`SegmentationBackbone` and use only the members below; the raw modules
(image encoder, prompt encoder, mask decoder) are private to the backbone. What a method needs
beyond the common contract is declared as **capabilities**: the backbone class lists the ones it
has (``CAPABILITIES``), the method class the ones it needs (``REQUIRES``), and the composition
root calls :func:`check_capabilities` before building anything.

Why this shape fits the next backbones without any method changing:

- SAM 2.1 (Hiera encoder, an object-score head): ``encode_features`` returns the stride-16
  embedding plus its stride-4/8 maps in ``ImageFeatures.levels`` (declares ``high_res_features``),
  and ``decode`` takes the ``ImageFeatures`` back, so the high-resolution skip connections stay
  inside the backbone; the object score can be folded into the IoU output. Hiera blocks are not a
  plain ViT, so it simply does not declare ``token_injection`` / ``vit_encoder`` (DIT and the
  SAM2CLIP adapter then fail at compose time with a clear message instead of at run time).
- HQ-SAM: its early and final ViT features are another ``levels`` entry and its HQ token one
  more output token inside ``decode``; masks, IoU and the extension points keep their shapes.
- Features travel whole: ``embed_images`` (the cached path most methods use) returns a batched
  ``ImageFeatures``; a method takes image ``i``'s features as ``features[i]`` (batch dim 1) and
  hands them to ``predict`` / ``decode`` unchanged, so levels a method never names still reach
  the decoder. A method reads ``.embedding`` only where it does tensor math on the embedding
  itself (PerSAM's similarity maps, SSPrompt's grid size, the SAM2CLIP teacher target), never
  to feed the decoder.
- Positional encodings (``image_pe``), the no-mask dense embedding, prompt encoding and pre/post-
  processing are asked for by grid size and coordinates, never by reaching into submodules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from sambench.errors import ConfigError

#: (transformer, src B×C×h×w, pos_src B×C×h×w, tokens B×T×C) -> (hs B×T×C, src B×hw×C)
TransformerFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple]
#: (block index, block, x B×h×w×C) -> x B×h×w×C
BlockFn = Callable[[int, nn.Module, torch.Tensor], torch.Tensor]

# ----- capabilities -----------------------------------------------------------------------------
#: ``encode(block_fn=...)`` hands over ViT blocks on a B×h×w×C grid that accept extra tokens (DIT).
TOKEN_INJECTION = "token_injection"
#: ``decode_with_output_token``: a caller's token in the IoU token's place (OV-SAM's label token).
EXTRA_OUTPUT_TOKENS = "extra_output_tokens"
#: ``decode(transformer_fn=...)`` hands over a SAM two-way transformer (PerSAM, DIT decoder layers).
TWO_WAY_TRANSFORMER_FN = "two_way_transformer_fn"
#: ``encoder_spec()`` / ``encoder_pos_embed()`` describe a plain ViT (the SAM2CLIP adapter imitates it).
VIT_ENCODER = "vit_encoder"
#: ``encode_features`` returns extra feature levels (SAM 2.1's stride-4/8 maps, HQ-SAM's early ViT features).
HIGH_RES_FEATURES = "high_res_features"
#: backbone kinds (``KIND`` / a method's ``BACKBONE_KIND``) in words, for error messages
BACKBONE_KINDS = {"promptable": "promptable SAM backbone (SAM, SAM 2, HQ-SAM: masks from points and boxes)",
                  "concept": "concept model (SAM 3: instances of a text or exemplar concept; method=sam3 only)"}
CAPABILITIES = frozenset({TOKEN_INJECTION, EXTRA_OUTPUT_TOKENS, TWO_WAY_TRANSFORMER_FN, VIT_ENCODER, HIGH_RES_FEATURES})


@dataclass(frozen=True, eq=False)
class ImageFeatures:
    """What the image encoder produced for B images: ``embedding`` B×C×h×w (SAM: 256×64×64 at
    1024²) and any extra feature levels by name (each B×…; empty for SAM v1).

    A batch of images, not a tensor: ``len`` is B, ``features[i]`` (and iteration) gives image
    ``i``'s features with a leading batch dim of 1 (embedding 1×C×h×w, every level sliced alike),
    ready for ``predict`` / ``decode``. Compared by identity (compare fields with ``torch.equal``).
    """

    embedding: torch.Tensor
    levels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embedding.shape[0]

    def __getitem__(self, i: int) -> ImageFeatures:
        """Image ``i`` (negative counts from the end) -> embedding 1×C×h×w, levels 1×…"""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image {i} of a batch of {n}")
        i %= n
        return ImageFeatures(self.embedding[i:i + 1], {name: level[i:i + 1] for name, level in self.levels.items()})

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to(self, device: torch.device | str) -> ImageFeatures:
        """The same features on ``device`` (embedding and every level)."""
        return ImageFeatures(self.embedding.to(device), {name: level.to(device) for name, level in self.levels.items()})


def stack_features(features: list[ImageFeatures]) -> ImageFeatures:
    """Concatenate per-image features (each batch dim 1, or more) along the batch dim."""
    names = list(features[0].levels)
    return ImageFeatures(torch.cat([f.embedding for f in features]),
                         {name: torch.cat([f.levels[name] for f in features]) for name in names})


def features_to_entry(features: ImageFeatures):
    """One image's features (batch dim 1) -> a cache entry: the C×h×w embedding alone (no levels,
    SAM v1's entry) or {"embedding": C×h×w, level: …} with the batch dim dropped."""
    if not features.levels:
        return features.embedding[0]
    if EMBEDDING in features.levels:
        raise ValueError(f"a feature level may not be called {EMBEDDING!r}")
    return {EMBEDDING: features.embedding[0], **{name: level[0] for name, level in features.levels.items()}}


def features_from_entry(entry) -> ImageFeatures | None:
    """A cache entry (see :func:`features_to_entry`) -> features with batch dim 1; None stays None."""
    if entry is None:
        return None
    if isinstance(entry, torch.Tensor):
        return ImageFeatures(entry[None])
    return ImageFeatures(entry[EMBEDDING][None], {n: v[None] for n, v in entry.items() if n != EMBEDDING})


#: the name of the embedding in a cache entry of several feature levels
EMBEDDING = "embedding"


@dataclass(frozen=True)
class EncoderSpec:
    """Sizes of a plain-ViT image encoder: token width, number of blocks, heads, token grid side."""

    width: int
    depth: int
    num_heads: int
    grid: int


class SegmentationBackbone(nn.Module):
    """The contract every backbone implements and every method uses exclusively.

    Shapes for SAM v1 (``image_size`` 1024, ``embed_dim`` 256): embeddings 1×256×64×64 per
    image, sparse prompts N×T×256, dense prompts N×256×64×64, low-res logits N×M×256×256.
    """

    #: what this backbone can do beyond the common contract (see the constants above)
    CAPABILITIES: frozenset[str] = frozenset()
    #: the registry name of the family (``sam``, ``sam2``, ``sam_hq``): the config's ``backbone.family``
    FAMILY: str = ""
    #: the kind of model (a method's ``BACKBONE_KIND`` must match): promptable masks from points/boxes
    KIND: str = "promptable"
    #: the submodule name of the private upstream model (its state-dict prefix) and the method that
    #: returns it (for official key maps, flop counts and reference tests only)
    RAW: str = ""
    RAW_ACCESSOR: str = ""

    # ----- the private upstream model ---------------------------------------------------------
    def __getattr__(self, name: str):
        if name and name == type(self).RAW:
            raise AttributeError(
                f"{type(self).__name__}.{name} is private: use the backbone interface (sambench/backbones/interface.py); "
                f"official key maps, flop counts and reference tests may use {type(self).__name__}.{self.RAW_ACCESSOR}()")
        return super().__getattr__(name)

    def __setattr__(self, name: str, value) -> None:
        if name and name == type(self).RAW:
            raise AttributeError(f"{type(self).__name__}.{name} is private and set once, in __init__")
        super().__setattr__(name, value)

    image_size: int  # input side of the encoder's frame (longest image side is resized to it)

    @property
    def capabilities(self) -> frozenset[str]:
        return self.capabilities_for(getattr(self, "variant", None))

    @classmethod
    def capabilities_for(cls, variant: str | None) -> frozenset[str]:
        """The capabilities of this class's ``variant`` (HQ-SAM's TinyViT is no plain ViT)."""
        return cls.CAPABILITIES

    # ----- sizes ------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Channels of the image embedding, prompt tokens and decoder tokens (SAM: 256)."""
        raise NotImplementedError

    @property
    def mask_threshold(self) -> float:
        """Logit threshold of a foreground pixel."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def encoder_spec(self) -> EncoderSpec:
        """Sizes of the ViT encoder (capability ``vit_encoder``)."""
        raise NotImplementedError

    def encoder_pos_embed(self) -> torch.Tensor:
        """The ViT's absolute position embedding 1×g×g×width (capability ``vit_encoder``)."""
        raise NotImplementedError

    def token_decoder_levels(self) -> dict[str, tuple[int, int]]:
        """The feature levels :meth:`decode_with_output_token` needs besides the embedding:
        name -> (channels, stride) (SAM v1 / HQ-SAM: none; SAM 2.1: its stride-4 and -8 maps).
        Open-Vocabulary SAM's adapter predicts these for backbones whose image encoder it replaces."""
        return {}

    # ----- images -----------------------------------------------------------------------------
    #: whether the resize into the encoder's frame keeps the aspect ratio (longest side to
    #: ``image_size``, then padding: SAM v1, HQ-SAM) or stretches to the square (SAM 2.1)
    KEEPS_ASPECT: bool = True

    def input_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the image in the encoder's frame: its longest side resized to ``image_size``
        (``KEEPS_ASPECT``), or the whole square (SAM 2.1)."""
        raise NotImplementedError

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 RGB -> 1×3×S×S normalised, zero-padded encoder input."""
        raise NotImplementedError

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Resized B×3×h×w pixels (0–255) -> normalised, zero-padded B×3×S×S."""
        raise NotImplementedError

    def encode(self, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> torch.Tensor:
        """B×3×S×S (any S the encoder accepts) -> embedding B×C×S/16×S/16."""
        return self.encode_features(pixels, block_fn).embedding

    def encode_features(self, pixels: torch.Tensor, block_fn: BlockFn | None = None) -> ImageFeatures:
        """B×3×S×S -> the embedding plus any extra feature levels."""
        raise NotImplementedError

    #: the on-disk feature cache (:class:`~sambench.cache.EmbeddingCache`), None when disabled
    cache = None

    @torch.no_grad()
    def embed_images(self, images: list[np.ndarray]) -> ImageFeatures:
        """Frozen-encoder features of B uint8 images (embedding B×C×h×w float32 plus every
        level, float32), through the cache when enabled (an entry holds all of one image's
        features); ``features[i]`` goes to ``predict`` / ``decode`` as it is."""
        out: list[ImageFeatures | None] = [None] * len(images)
        keys = [self.cache.image_key(img) for img in images] if self.cache else []
        for i, key in enumerate(keys):
            out[i] = features_from_entry(self.cache.get(key))
        for i in [i for i, feats in enumerate(out) if feats is None]:  # one at a time: ViT-H at 1024² is memory-heavy
            feats = self.encode_features(self.preprocess(images[i]))[0]
            out[i] = ImageFeatures(feats.embedding.float(), {n: v.float() for n, v in feats.levels.items()})
            if self.cache:
                self.cache.put(keys[i], features_to_entry(out[i]))
        return stack_features([feats.to(self.device) for feats in out])

    def training_features(self, images: list[np.ndarray]) -> ImageFeatures:
        """Features of B uint8 images for a training step: through the encoder with gradients
        when any of its parameters trains (fine-tuning, adapters: ``method.peft``), else the
        frozen, cached :meth:`embed_images`."""
        if not self.encoder_trains():
            return self.embed_images(images)
        return stack_features([self.encode_features(self.preprocess(image)) for image in images])

    def encoder_trains(self) -> bool:
        """Whether any parameter of the image encoder (the ``encoder`` part) requires grad."""
        pattern = self.peft_parts().get("encoder")
        if pattern is None:
            return False
        regex = re.compile(pattern)
        return any(p.requires_grad and regex.fullmatch(n) for n, p in self._modules[self.RAW].named_parameters())

    def drop_image_encoder(self, reason: str) -> None:
        """Free the image encoder of a method that never runs it."""
        raise NotImplementedError

    # ----- prompts ----------------------------------------------------------------------------
    def image_pe(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Positional encoding of an embedding grid of any size -> 1×C×h×w."""
        raise NotImplementedError

    def no_mask_embedding(self, n: int, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The dense embedding of "no mask prompt" for ``n`` prompt sets -> n×C×h×w (a view)."""
        raise NotImplementedError

    def encode_prompts(self, original_size: tuple[int, int], points=None, point_labels=None, boxes=None,
                       mask_inputs=None, float64_coords: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in original-image pixels -> (sparse N×T×C, dense N×C×h×w)."""
        raise NotImplementedError

    def encode_frame_prompts(self, points=None, point_labels=None, boxes=None,
                             mask_inputs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts already in the encoder's input frame -> (sparse N×T×C, dense N×C×h×w)."""
        raise NotImplementedError

    def scale_coords(self, coords: torch.Tensor, original_size: tuple[int, int], float64: bool = False) -> torch.Tensor:
        """(x, y) …×2 in original pixels -> …×2 in the input frame."""
        raise NotImplementedError

    def scale_boxes(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """N×4 xyxy boxes in original pixels -> N×4 in the input frame."""
        return self.scale_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    # ----- decoder ----------------------------------------------------------------------------
    def decode(self, embedding: torch.Tensor | ImageFeatures, sparse: torch.Tensor, dense: torch.Tensor,
               multimask_output: bool = False,
               transformer_fn: TransformerFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding 1×C×h×w (N prompt sets share it) or N×C×h×w -> low-res logits N×M×4h×4w, IoU N×M."""
        raise NotImplementedError

    def decode_with_output_token(self, embedding: torch.Tensor | ImageFeatures, token: torch.Tensor,
                                 sparse: torch.Tensor, dense: torch.Tensor,
                                 transformer_fn: TransformerFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Single-mask decoding with ``token`` (1×C) in the IoU token's place (``extra_output_tokens``)
        -> low-res logits N×1×4h×4w and the token's output N×C."""
        raise NotImplementedError

    def postprocess(self, low_res: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits N×M×4h×4w -> N×M×H×W at the original size."""
        raise NotImplementedError

    def predict(self, embedding, original_size, points=None, point_labels=None, boxes=None, mask_inputs=None,
                multimask_output: bool = False, transformer_fn: TransformerFn | None = None,
                float64_coords: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """encode_prompts -> decode -> postprocess: logits N×M×H×W, IoU N×M, low-res N×M×4h×4w."""
        sparse, dense = self.encode_prompts(original_size, points, point_labels, boxes, mask_inputs, float64_coords)
        low_res, iou = self.decode(embedding, sparse, dense, multimask_output, transformer_fn)
        return self.postprocess(low_res, original_size), iou, low_res

    # ----- training ---------------------------------------------------------------------------
    def set_trainable(self, *, image_encoder: bool = False, prompt_encoder: bool = False, mask_decoder: bool = False,
                      iou_head: bool | None = None, no_mask_embed: bool | None = None,
                      output_token_only: bool = False) -> None:
        """Freeze everything, then let the named parts train.

        Args:
            image_encoder / prompt_encoder / mask_decoder: whole parts.
            iou_head: the IoU prediction head (None: as ``mask_decoder``).
            no_mask_embed: the no-mask dense embedding (None: as ``prompt_encoder``).
            output_token_only: keep frozen what :meth:`decode_with_output_token` never uses
                (the IoU token and the other mask tokens' output heads).
        """
        raise NotImplementedError

    #: whether encoder blocks run under activation checkpointing while grad is enabled
    #: (:meth:`set_activation_checkpointing`; off: the encoder runs exactly as before)
    activation_checkpointing: bool = False

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Run each image-encoder block under activation checkpointing (``torch.utils.checkpoint``,
        non-reentrant) while grad is enabled, around whatever the block call is (a caller's
        ``block_fn`` included): less memory for a trained encoder, one more encoder forward per
        step; no effect under ``no_grad``. See :mod:`sambench.backbones.checkpointing`."""
        raise ConfigError(f"{type(self).__name__} ({getattr(self, 'name', '?')}) has no activation checkpointing of "
                          f"its image encoder (trainer.activation_checkpointing=true)")

    def image_encoder_trains(self) -> bool:
        """Whether any parameter of the image encoder (anything :meth:`encode_features` runs) has
        ``requires_grad`` (whole-encoder training, a partly frozen encoder, LoRA tensors)."""
        raise NotImplementedError


    # ----- parameter-efficient fine-tuning (sambench/peft) ----------------------------------------
    def peft_parts(self) -> dict[str, str]:
        """Part name (``encoder``, ``prompt_encoder``, ``decoder``) -> regex over the upstream
        model's parameter names (``method.peft.train`` / ``freeze``)."""
        return {}

    def peft_targets(self) -> dict[str, str]:
        """Target name (``encoder_attention``, ``encoder_mlp``, ``decoder_attention``,
        ``decoder_mlp``) -> regex over the upstream model's ``nn.Linear`` module names
        (``method.peft.targets``)."""
        return {}


def check_capabilities(method_name: str, method_cls: type, backbone_name: str, capabilities: frozenset[str],
                       fitting: list[str] | None = None, kind: str = "promptable") -> None:
    """Compose-time check: raise a ConfigError when the backbone is of another ``kind`` than the
    method's ``BACKBONE_KIND`` or its ``capabilities`` lack what the method ``REQUIRES``;
    ``fitting`` (the backbone configs that have it) goes in the message."""
    fits = f"; backbones that fit: {', '.join(fitting)}" if fitting else ""
    wanted = getattr(method_cls, "BACKBONE_KIND", "promptable")
    if kind != wanted:
        raise ConfigError(f"method '{method_name}' runs on a {BACKBONE_KINDS.get(wanted, wanted)}, and backbone "
                          f"'{backbone_name}' is a {BACKBONE_KINDS.get(kind, kind)}{fits}")
    required = set(getattr(method_cls, "REQUIRES", ()))
    unknown = sorted(required - CAPABILITIES)
    if unknown:
        raise ConfigError(f"method '{method_name}' requires unknown backbone capabilities {unknown}; "
                          f"known: {', '.join(sorted(CAPABILITIES))}")
    missing = sorted(required - set(capabilities))
    if missing:
        has = ", ".join(sorted(capabilities)) or "none"
        raise ConfigError(f"method '{method_name}' needs backbone capabilities {', '.join(missing)}, which backbone "
                          f"'{backbone_name}' lacks (it has: {has}){fits}")


def require_sam_v1(backbone: SegmentationBackbone, what: str) -> None:
    """Raise a ConfigError unless ``backbone`` is SAM v1: the authors' released files of DIT and
    Open-Vocabulary SAM (``what``) hold SAM v1 tensors only."""
    if backbone.FAMILY != "sam":
        raise ConfigError(f"{what}: the authors released files for SAM v1 backbones only (backbone=sam_vit_b/l/h), "
                          f"not for backbone={getattr(backbone, 'name', type(backbone).__name__)} "
                          f"(family {backbone.FAMILY or '?'}); train it with sambench instead")
