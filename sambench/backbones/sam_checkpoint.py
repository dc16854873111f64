"""Build SAM with ``segment_anything``'s builders and load local weights safely."""

from __future__ import annotations

import hashlib
import os

import torch
from segment_anything.build_sam import _build_sam, sam_model_registry
from segment_anything.modeling import Sam

from sambench.errors import CheckpointError
from sambench.weights_file import load_model_state

#: Official checkpoint file names (github.com/facebookresearch/segment-anything, "Model Checkpoints").
OFFICIAL_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
#: ViT width -> variant, used to tell which model a mismatched checkpoint belongs to.
WIDTH_TO_VARIANT = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def build_sam_model(
    variant: str,
    checkpoint: str | None = None,
    allow_random_init: bool = False,
    encoder_embed_dim: int | None = None,
    encoder_depth: int | None = None,
    encoder_num_heads: int | None = None,
    encoder_global_attn_indexes: list[int] | None = None,
    init_seed: int = 0,
) -> Sam:
    """Return an upstream ``Sam`` (eval mode) for ``variant`` in {vit_b, vit_l, vit_h, tiny}.

    ``tiny`` uses the given encoder sizes (1024² input, 64×64 embeddings, full-size decoder)
    and a fixed ``init_seed``. Official variants need ``checkpoint`` unless
    ``allow_random_init`` (speed benchmarks only).
    """
    if variant == "tiny":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            sam = _build_sam(
                encoder_embed_dim=encoder_embed_dim,
                encoder_depth=encoder_depth,
                encoder_num_heads=encoder_num_heads,
                encoder_global_attn_indexes=list(encoder_global_attn_indexes),
            )
    elif variant in sam_model_registry and variant != "default":
        if checkpoint is None and not allow_random_init:
            raise CheckpointError(
                f"backbone SAM {variant} needs its weights: download {OFFICIAL_FILES[variant]} from "
                "the segment-anything repository's 'Model Checkpoints' and pass "
                "backbone.checkpoint=<path to it>"
            )
        sam = sam_model_registry[variant](checkpoint=None)
    else:
        raise CheckpointError(f"unknown SAM variant '{variant}'; expected vit_b, vit_l, vit_h or tiny")
    if checkpoint is not None:
        load_sam_weights(sam, checkpoint, variant)
    return sam.eval()


def load_sam_weights(sam: Sam, checkpoint: str, variant: str) -> None:
    """Load a local SAM state dict with ``weights_only=True``; clear errors for bad files."""
    load_model_state(sam, checkpoint, model_name=f"SAM {variant}",
                     expected=OFFICIAL_FILES.get(variant, f"a SAM {variant} state dict"),
                     hint=lambda state: _guess(state, variant))


def _guess(state: dict, variant: str) -> str:
    """'; it looks like a SAM <variant> checkpoint' from the ViT width, or ''."""
    width = state.get("image_encoder.pos_embed", torch.empty(0)).shape[-1:]
    guess = WIDTH_TO_VARIANT.get(int(width[0])) if len(width) else None
    return f"; it looks like a SAM {guess} checkpoint" if guess and guess != variant else ""


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime) for this process."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
        _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


_SHA_MEMO: dict[tuple, str] = {}


def module_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's tensors (for randomly initialised models without a file)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
