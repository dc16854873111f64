"""Build SAM 2 / SAM 2.1 (``SAM2Base``) from the official ``sam2`` package's YAML and load local weights.

``sam2.build_sam.build_sam2`` is never called: it composes its config with Hydra's global
``compose``, which collides with a running sambench Hydra app, and ``import sam2`` initialises
Hydra's ``GlobalHydra`` when nobody has. So :func:`import_sam2` imports the package and clears
the ``GlobalHydra`` it set up (only when it was not initialised before), and :func:`build_sam2_model`
reads the package's YAML with OmegaConf, applies the overrides of
``build_sam2(apply_postprocessing=True)`` and instantiates ``cfg.model`` with
``hydra.utils.instantiate`` (which needs no ``GlobalHydra``).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from sambench.errors import CheckpointError
from sambench.weights_file import load_model_state

#: variant -> the package's config file (``sam2/configs/...``)
CONFIGS = {
    **{f"sam2.1_hiera_{size}": f"configs/sam2.1/sam2.1_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")},
    **{f"sam2_hiera_{size}": f"configs/sam2/sam2_hiera_{size}.yaml" for size in ("t", "s", "b+", "l")},
}
#: the config the tiny preset starts from
TINY_BASE = "sam2.1_hiera_t"
_SIZE_FILE = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}
#: Official checkpoint file names (github.com/facebookresearch/sam2, "Download Checkpoints").
OFFICIAL_FILES = {variant: f"{variant.split('_hiera_')[0]}_hiera_{_SIZE_FILE[variant.rsplit('_', 1)[1]]}.pt"
                  for variant in CONFIGS}
#: (Hiera trunk width, number of trunk blocks) -> size letter, to tell which model a file is for
TRUNK_TO_SIZE = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}
#: what ``build_sam2(apply_postprocessing=True)`` sets for image prediction
POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}
DOWNLOAD = "github.com/facebookresearch/sam2 ('Download Checkpoints')"


def import_sam2():
    """``import sam2`` without leaving Hydra's ``GlobalHydra`` initialised by it: the package's
    ``__init__`` initialises it (config module ``sam2``) when nobody has, which would make
    sambench's own ``initialize_config_dir`` / ``hydra.main`` fail later. Inside a running Hydra
    app (already initialised) the package leaves it alone and so does this. Returns the package."""
    from hydra.core.global_hydra import GlobalHydra

    was_initialized = GlobalHydra.instance().is_initialized()
    package = importlib.import_module("sam2")
    if not was_initialized and GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    return package


def model_config(variant: str):
    """The package's model config of ``variant`` (an OmegaConf node ``model``) with the
    image-prediction overrides of ``build_sam2(apply_postprocessing=True)``."""
    from omegaconf import OmegaConf

    package = import_sam2()
    path = Path(package.__path__[0]) / CONFIGS[variant]
    cfg = OmegaConf.load(path)
    extra = cfg.model.get("sam_mask_decoder_extra_args") or {}
    cfg.model.sam_mask_decoder_extra_args = {**extra, **POSTPROCESSING}
    OmegaConf.resolve(cfg)
    return cfg.model


def tiny_config(embed_dim: int, num_heads: int, stages: list[int], global_att_blocks: list[int]):
    """The hiera_t (SAM 2.1) config with a narrow, shallow Hiera trunk and one memory-attention
    layer (unused in image mode); 1024² input, the real 256-channel prompt encoder and decoder."""
    if len(stages) != 4 or min(stages) < 1:
        raise CheckpointError(f"sam2 tiny preset: trunk_stages={stages} must be 4 block counts >= 1 (Hiera's 4 stages)")
    model = model_config(TINY_BASE)
    trunk = model.image_encoder.trunk
    trunk.embed_dim, trunk.num_heads = embed_dim, num_heads
    trunk.stages, trunk.global_att_blocks = list(stages), list(global_att_blocks)
    model.image_encoder.neck.backbone_channel_list = [embed_dim * 2 ** i for i in reversed(range(len(stages)))]
    model.memory_attention.num_layers = 1
    return model


def build_sam2_model(
    variant: str,
    checkpoint: str | None = None,
    allow_random_init: bool = False,
    trunk_embed_dim: int = 16,
    trunk_num_heads: int = 1,
    trunk_stages: list[int] | None = None,
    trunk_global_att_blocks: list[int] | None = None,
    init_seed: int = 0,
) -> torch.nn.Module:
    """Return an upstream ``SAM2Base`` (eval mode, CPU) for ``variant`` (a key of
    :data:`CONFIGS`, or ``tiny``: the given trunk sizes, seeded with ``init_seed``). Official
    variants need ``checkpoint`` unless ``allow_random_init`` (speed benchmarks only)."""
    from hydra.utils import instantiate

    if variant == "tiny":
        cfg = tiny_config(trunk_embed_dim, trunk_num_heads, trunk_stages or [1, 1, 1, 1], trunk_global_att_blocks or [])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = instantiate(cfg, _recursive_=True)
    elif variant in CONFIGS:
        if checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"backbone SAM 2 {variant} needs its weights: download {OFFICIAL_FILES[variant]} from {DOWNLOAD} "
                "and pass backbone.checkpoint=<path to it>")
        model = instantiate(model_config(variant), _recursive_=True)
    else:
        raise CheckpointError(f"unknown SAM 2 variant '{variant}'; expected {', '.join(CONFIGS)} or tiny")
    if checkpoint is not None:
        load_sam2_weights(model, checkpoint, variant)
    return model.eval()


def guess_variant(state: dict) -> str | None:
    """Which official variant a state dict looks like: the Hiera trunk's width and block count
    tell the size, SAM 2.1-only tensors (``no_obj_embed_spatial``) the version."""
    pos = state.get("image_encoder.trunk.pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.dim() != 4:
        return None
    blocks = {int(m.group(1)) for key in state if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", key))}
    size = TRUNK_TO_SIZE.get((int(pos.shape[1]), len(blocks)))
    if size is None:
        return None
    return f"sam2.1_hiera_{size}" if "no_obj_embed_spatial" in state else f"sam2_hiera_{size}"


def load_sam2_weights(model: torch.nn.Module, checkpoint: str, variant: str) -> None:
    """Load a local SAM 2 checkpoint (the official dict with the weights under ``"model"``, or a
    bare state dict) with ``weights_only=True``; clear errors for bad files."""
    def hint(state: dict) -> str:
        guess = guess_variant(state)
        return f"; it looks like a {guess} checkpoint ({OFFICIAL_FILES[guess]})" if guess and guess != variant else ""

    load_model_state(model, checkpoint, model_name=f"SAM 2 {variant}",
                     expected=OFFICIAL_FILES.get(variant, f"a SAM 2 {variant} state dict") + f" from {DOWNLOAD}",
                     hint=hint)
