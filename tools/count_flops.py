"""Inference GFLOPs and parameters of Open-Vocabulary SAM and the SAM + CLIP baselines at 1024²
(no GPU, no weights: models on the meta device): ``python tools/count_flops.py [--prompts N]``.

Prints a Markdown table beside the paper's Table 1 (see ``sambench/cli/flops.py``).
``--backbones [NAME ...]`` instead prints the backbone table: parameters, GMACs at 1024² and the
encoder's CPU time per image with a cold and a warm embedding cache (``sambench/cli/backbone_cost.py``;
no names = every official backbone; real random-weight models, so ViT-H / Hiera-L take minutes on a CPU).
"""

import argparse
import json
import sys

from sambench.cli.backbone_cost import OFFICIAL, backbone_table, measure_backbone
from sambench.cli.flops import measure, table
from sambench.errors import ConfigError

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sam", default="vit_h", help="SAM variant of the prompt encoder/decoder and the baselines")
    parser.add_argument("--clip", default="RN50x16", help="open_clip ResNet model (OV-SAM's frozen CLIP)")
    parser.add_argument("--image-size", type=int, default=1024, help="input side (SAM's frame)")
    parser.add_argument("--prompts", type=int, default=10, help="box prompts per image (10 reproduces the paper's counts)")
    parser.add_argument("--classes", type=int, default=65, help="vocabulary size (cosine classifier)")
    parser.add_argument("--feature-crop-size", type=int, default=1024, help="input side of the feature-crop CLIP")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--backbones", nargs="*", metavar="NAME", help="print the backbone table instead (backbone "
                        "config names; none = every official backbone)")
    parser.add_argument("--repeats", type=int, default=1, help="timing rounds per backbone (--backbones; median)")
    args = parser.parse_args()
    if args.backbones is not None:
        results = {}
        for name in args.backbones or OFFICIAL:
            try:
                results[name] = measure_backbone(name, repeats=args.repeats)
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)
            print(f"measured {name}: {results[name]}", flush=True)
        print(backbone_table(results))
    else:
        results = measure(args.sam, args.clip, args.image_size, args.prompts, args.classes, args.feature_crop_size)
        print(table(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
