"""Inference cost of Open-Vocabulary SAM and the SAM + CLIP baselines (``tools/count_flops.py``).

Models are built on the ``meta`` device (no weights, no memory) and run through
``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per multiply-accumulate; the
paper's "FLOPs" are multiply-accumulates, so both are printed. Each model processes one image at
``image_size``² with ``prompts`` box prompts, through the same methods it runs at evaluation:

- ``ovsam``: CLIP ResNet stages + SAM2CLIP adapter + FPN, prompt encoder + single-mask decoder,
  RoI head and the frozen-CLIP branch (RoIAlign -> attnpool) per prompt;
- ``image_crop``: SAM's ViT encoder, prompt encoder + decoder per prompt, CLIP's image encoder
  on one crop per prompt (at CLIP's input size);
- ``feature_crop``: SAM as above, CLIP's dense features of the whole image once.
The text embeddings are computed once per vocabulary and not counted (as in the paper).
RoIAlign and interpolation have no FLOP formula in the counter (they are negligible).
"""

from __future__ import annotations

import torch
import torch.fx.experimental._config as fx_config
from torch.utils.flop_counter import FlopCounterMode

from sambench.backbones.sam import SamBackbone
from sambench.registry import METHODS, load_plugins

#: Table 1 of the paper: (GFLOPs as printed = GMACs, parameters in millions).
PAPER = {"ovsam": (1180, 304), "image_crop": (3748, 808), "feature_crop": (3545, 808)}


def count(fn) -> int:
    """FLOPs (2 per MAC) of ``fn()``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def millions(*modules) -> float:
    seen, total = set(), 0
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total / 1e6


def _sam_part(sam: SamBackbone, pixels: torch.Tensor, boxes: torch.Tensor) -> None:
    embedding = sam.encode(pixels)
    sparse, dense = sam.encode_frame_prompts(boxes=boxes)
    sam.decode(embedding, sparse, dense, multimask_output=False)


def measure(sam_variant: str = "vit_h", clip_model: str = "RN50x16", image_size: int = 1024, prompts: int = 10,
            classes: int = 65, feature_crop_size: int = 1024) -> dict[str, dict[str, float]]:
    """{model: {"gflops", "gmacs", "params_m"}} for ovsam, image_crop and feature_crop."""
    load_plugins()
    clip = {"model": clip_model, "allow_random_init": True}
    fx_config.meta_nonzero_assume_all_nonzero = True  # RoI level assignment on meta tensors
    results = {}
    with torch.device("meta"), torch.no_grad():
        pixels, boxes = torch.zeros(1, 3, image_size, image_size), torch.zeros(prompts, 4)
        rois = torch.zeros(prompts, 5)

        ov = METHODS.get("ovsam")(sam=SamBackbone(name="sam", variant=sam_variant, allow_random_init=True), clip=clip,
                                  allow_untrained=True)
        text = torch.zeros(classes, 1, ov.clip.embed_dim)

        def ovsam() -> None:
            embedding, stages, fpn = ov.image_features(pixels)
            sparse, dense = ov.prompt_embeddings(boxes=boxes)
            _, token_out = ov.decode(embedding, sparse, dense)
            ov.class_logits(fpn, rois, token_out, text)
            ov.clip_logits(stages[3], rois, text)

        raw = ov.sam._raw_sam()  # parameter counts of the raw parts on the forward path
        decoder = raw.mask_decoder
        used_decoder = [m for n, m in decoder.named_children() if n not in ("iou_token", "iou_prediction_head", "output_hypernetworks_mlps")]
        ov_params = millions(ov.clip.clip.visual, ov.adapter, raw.prompt_encoder, *used_decoder,
                             decoder.output_hypernetworks_mlps[0], ov.label, ov.fpn, ov.region)
        results["ovsam"] = _entry(count(ovsam), ov_params)

        crop = METHODS.get("image_crop")(sam=SamBackbone(name="sam", variant=sam_variant, allow_random_init=True), clip=clip)
        size = crop.crop_size

        def image_crop() -> None:
            _sam_part(crop.sam, pixels, boxes)
            crop.clip.clip.encode_image(torch.zeros(prompts, 3, size, size))

        results["image_crop"] = _entry(count(image_crop), millions(crop.sam, crop.clip.clip.visual))

        feat = METHODS.get("feature_crop")(sam=crop.sam, clip={**clip, "dense_size": feature_crop_size})
        dense = feat.clip.dense_from_pixels if feat.clip.is_vit else feat.clip.resnet_dense_from_pixels

        def feature_crop() -> None:
            _sam_part(feat.sam, pixels, boxes)
            dense(torch.zeros(1, 3, feature_crop_size, feature_crop_size))

        results["feature_crop"] = _entry(count(feature_crop), millions(feat.sam, feat.clip.clip.visual))
    fx_config.meta_nonzero_assume_all_nonzero = False
    return results


def _entry(flops: int, params_m: float) -> dict[str, float]:
    return {"gflops": flops / 1e9, "gmacs": flops / 2e9, "params_m": params_m}


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of the measured numbers beside the paper's."""
    rows = ["| model | GFLOPs (counter, 2/MAC) | GMACs | params (M) | paper \"GFLOPs\" (MACs) | paper params (M) |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        paper = PAPER.get(name, ("", ""))
        rows.append(f"| {name} | {r['gflops']:,.0f} | {r['gmacs']:,.0f} | {r['params_m']:,.1f} | {paper[0]:,} | {paper[1]} |")
    return "\n".join(rows)
