"""Build HQ-SAM with ``segment_anything_hq``'s random-init builders and load local weights safely.

The upstream builders ``torch.load`` without ``weights_only``, load non-strictly and print; they
are only used with ``checkpoint=None`` here, and the weights are loaded with
:func:`sambench.weights_file.load_weights_file` and strict key checking.

Importing ``segment_anything_hq`` (its ``tiny_vit_sam`` module) registers ``tiny_vit_*`` models
in timm's model registry, overwriting timm's own entries with a warning each.
:func:`import_sam_hq` imports it with timm's registry snapshotted and restored, and with only
those warnings (and timm's deprecation notices for the package's old import paths) silenced.
"""

from __future__ import annotations

import copy
import importlib
import sys
import warnings
from types import ModuleType

import torch
from torch import nn

from sambench.errors import CheckpointError
from sambench.weights_file import load_model_state

#: Official checkpoint file names (github.com/SysCV/sam-hq, "Model Checkpoints").
OFFICIAL_FILES = {
    "vit_b": "sam_hq_vit_b.pth",
    "vit_l": "sam_hq_vit_l.pth",
    "vit_h": "sam_hq_vit_h.pth",
    "vit_tiny": "sam_hq_vit_tiny.pth",
}
#: Width of the early feature the HQ decoder fuses (``compress_vit_feat``) -> variant.
VIT_DIM_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h", 160: "vit_tiny"}
#: the upstream parts HQ-SAM adds to SAM's mask decoder (submodules of ``MaskDecoderHQ``)
HQ_PARTS = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature")
#: timm registry containers ``register_model`` writes to (timm.models._registry)
_TIMM_REGISTRY = ("_module_to_models", "_model_to_module", "_model_entrypoints", "_model_has_pretrained",
                  "_model_default_cfgs", "_model_pretrained_cfgs", "_model_with_tags",
                  "_module_to_deprecated_models", "_deprecated_models")
#: the warnings importing segment_anything_hq raises about timm (nothing else is silenced)
_IMPORT_WARNINGS = (r"Overwriting tiny_vit_\w+ in registry",
                    r"Importing from timm\.models\.(registry|layers) is deprecated")


def import_sam_hq() -> ModuleType:
    """``segment_anything_hq``, imported without changing timm's model registry or warning."""
    if "segment_anything_hq" in sys.modules:
        return sys.modules["segment_anything_hq"]
    import timm.models  # noqa: F401  (timm's own tiny_vit_* entries exist before the snapshot)
    registry = importlib.import_module("timm.models._registry")
    saved = {name: copy.copy(getattr(registry, name)) for name in _TIMM_REGISTRY if hasattr(registry, name)}
    for name, container in saved.items():  # copy the sets/lists inside too: register_model mutates them
        if isinstance(container, dict):
            for key, value in container.items():
                if isinstance(value, (set, list, dict)):
                    container[key] = copy.copy(value)
    try:
        with warnings.catch_warnings():
            for message in _IMPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            return importlib.import_module("segment_anything_hq")
    finally:
        for name, snapshot in saved.items():
            container = getattr(registry, name)
            container.clear()
            container.update(snapshot)


def build_sam_hq_model(
    variant: str,
    checkpoint: str | None = None,
    allow_random_init: bool = False,
    encoder_embed_dim: int | None = None,
    encoder_depth: int | None = None,
    encoder_num_heads: int | None = None,
    encoder_global_attn_indexes: list[int] | None = None,
    init_seed: int = 0,
) -> nn.Module:
    """An upstream HQ-SAM ``Sam`` (eval mode, every parameter ``requires_grad`` as a fresh module)
    for ``variant`` in {vit_b, vit_l, vit_h, vit_tiny, tiny}.

    ``tiny`` is a ViT with the given encoder sizes (1024² input, 64×64 embeddings, full-size prompt
    encoder and HQ decoder), initialised under ``init_seed``. Official variants need
    ``checkpoint`` unless ``allow_random_init`` (speed benchmarks only).
    """
    import_sam_hq()
    builders = importlib.import_module("segment_anything_hq.build_sam")  # the package's name is a function
    if variant == "tiny":
        if not encoder_global_attn_indexes:
            raise CheckpointError("sam_hq tiny needs encoder_global_attn_indexes: the HQ decoder fuses the output "
                                  "of the first global-attention block")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            sam = builders._build_sam(
                encoder_embed_dim=encoder_embed_dim,
                encoder_depth=encoder_depth,
                encoder_num_heads=encoder_num_heads,
                encoder_global_attn_indexes=list(encoder_global_attn_indexes),
                checkpoint=None,
            )
    elif variant in OFFICIAL_FILES:
        if checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"backbone HQ-SAM {variant} needs its weights: download {OFFICIAL_FILES[variant]} from "
                "github.com/SysCV/sam-hq ('Model Checkpoints') and pass backbone.checkpoint=<path to it>"
            )
        sam = builders.sam_model_registry[variant](checkpoint=None)
    else:
        raise CheckpointError(f"unknown HQ-SAM variant '{variant}'; expected vit_b, vit_l, vit_h, vit_tiny or tiny")
    sam.requires_grad_(True)  # the upstream builders freeze all but the HQ parts; set_trainable decides
    if checkpoint is not None:
        load_sam_hq_weights(sam, checkpoint, variant)
    # eval() after loading: TinyViT's attention caches its biases (``ab``) when switched to eval
    return sam.eval()


def load_sam_hq_weights(sam: nn.Module, checkpoint: str, variant: str) -> None:
    """Load a local HQ-SAM state dict with ``weights_only=True``; clear errors for bad files."""
    load_model_state(sam, checkpoint, model_name=f"HQ-SAM {variant}",
                     expected=OFFICIAL_FILES.get(variant, f"an HQ-SAM {variant} state dict"),
                     hint=lambda state: _guess(state, variant))


def _guess(state: dict, variant: str) -> str:
    """A hint naming the model a mismatched state dict looks like ('' when unsure or the same)."""
    fused = state.get("mask_decoder.compress_vit_feat.0.weight")
    if fused is None:
        if any(key.startswith("mask_decoder.") for key in state):
            return "; it looks like a SAM (v1) or MobileSAM checkpoint without HQ-SAM's HQ token"
        return ""
    guess = VIT_DIM_TO_VARIANT.get(int(fused.shape[0]))
    if guess and guess != variant:
        return f"; it looks like an HQ-SAM {guess} checkpoint ({OFFICIAL_FILES[guess]})"
    return ""
