"""Cost of each backbone (``tools/count_flops.py --backbones``): parameters, GMACs at 1024² and the
image encoder's time per image on this machine's CPU, with a cold and a warm embedding cache.

Each backbone config is built with random weights (``checkpoint=null``, ``allow_random_init``:
the shapes and the arithmetic of the official files, no download). Per backbone:

- **params (M)**: every tensor of the model, as its checkpoint holds them (SAM 2.1 includes its
  memory modules, which image mode never runs);
- **GMACs**: ``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate, halved) over one
  1024² image through the encoder plus one box prompt through the prompt encoder and decoder;
- **cold ms**: ``embed_images`` of one image with an empty cache (pre-processing, encoder, cache
  write); **warm ms**: the same image again (a cache read). Median of ``repeats`` rounds, each on
  a fresh cache folder; ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sambench.backbones.interface import BACKBONE_KINDS
from sambench.backbones.registry import DEFAULT_FAMILY, backbone_class, backbone_configs, kind_of
from sambench.errors import ConfigError

#: the official backbones, in the table's order
OFFICIAL = ("sam_vit_b", "sam_vit_l", "sam_vit_h", "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+",
            "sam2.1_hiera_l", "sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny")


def build_random(name: str, cache_dir: str | None = None):
    """The backbone of ``conf/backbone/<name>.yaml`` with random weights (eval mode)."""
    config = dict(backbone_configs()[name])
    cls = backbone_class(config.pop("family", DEFAULT_FAMILY))
    config.update(checkpoint=None, allow_random_init=True)
    return cls(**config, cache_dir=cache_dir).eval()


def measure_backbone(name: str, repeats: int = 1, image_hw: tuple[int, int] = (768, 1024)) -> dict[str, float]:
    """{"params_m", "gmacs", "cold_ms", "warm_ms"} of one backbone config."""
    config = backbone_configs().get(name, {})
    if kind_of(config) != "promptable":
        raise ConfigError(f"backbone '{name}' is a {BACKBONE_KINDS[kind_of(config)]}, not a promptable SAM backbone: "
                          "this table measures an image encoding and one box decode, which it does not have")
    image = np.random.default_rng(0).integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    backbone = build_random(name).requires_grad_(False)
    params = sum(p.numel() for p in backbone.parameters()) / 1e6
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = backbone.encode_features(backbone.preprocess(image))
        box = torch.tensor([[10.0, 20.0, 300.0, 400.0]])
        sparse, dense = backbone.encode_prompts(image_hw, boxes=box)
        backbone.decode(features, sparse, dense)
    cold, warm = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            cached = build_random(name, cache_dir=folder)
            cached.load_state_dict(backbone.state_dict())
            for times in (cold, warm):
                start = time.perf_counter()
                cached.embed_images([image])
                times.append((time.perf_counter() - start) * 1e3)
    return {"params_m": params, "gmacs": counter.get_total_flops() / 2e9,
            "cold_ms": statistics.median(cold), "warm_ms": statistics.median(warm)}


def backbone_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of :func:`measure_backbone` results, one row per backbone."""
    rows = ["| backbone | params (M) | GMACs at 1024² | encoder ms, cold cache | encoder ms, warm cache |",
            "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['params_m']:,.1f} | {r['gmacs']:,.0f} | {r['cold_ms']:,.0f} | {r['warm_ms']:,.1f} |")
    return "\n".join(rows)
