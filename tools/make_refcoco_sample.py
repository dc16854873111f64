"""Write a tiny synthetic RefCOCO-style dataset (real refer API file layout) for quick runs.

    python tools/make_refcoco_sample.py <out_dir> [--num-images N] [--seed S]
        [--dataset refcoco|refcoco+|refcocog] [--split-by unc|umd|google]

Then train/evaluate with ``dataset=refcoco dataset.root=<out_dir>``.
"""

import argparse
import sys
from pathlib import Path

from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
from sambench.errors import SambenchError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="the refer data root to create")
    parser.add_argument("--num-images", type=int, default=12, help="images over all splits (default 12)")
    parser.add_argument("--seed", type=int, default=0, help="generation seed (default 0)")
    parser.add_argument("--dataset", default="refcoco", help="dataset folder (default refcoco)")
    parser.add_argument("--split-by", default="unc", help="refs flavour (default unc)")
    args = parser.parse_args(argv)
    try:
        root = write_synthetic_refcoco(args.out_dir, num_images=args.num_images, seed=args.seed,
                                       dataset=args.dataset, split_by=args.split_by)
    except SambenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {root / args.dataset} and {root / 'images'}")
    return 0


sys.exit(main(sys.argv[1:]))
