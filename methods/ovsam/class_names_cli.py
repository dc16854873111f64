"""``tools/make_class_names.py``: write a ``dataset.class_names_file`` (per-class synonym lists)
from a checkout of the official Open-Vocabulary SAM repository, which sambench does not ship
(S-Lab License 1.0). The official file is parsed, never run (:mod:`methods.ovsam.official_class_names`).

    python tools/make_class_names.py --ovsam-repo <checkout of the official OV-SAM repository> --source coco --out coco_ov_class_names.json \
        [--ann-file <coco>/annotations/instances_val2017.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sambench.data.coco_format import load_coco_json
from sambench.data.open_vocab import read_class_names_file
from sambench.errors import SambenchError
from sambench.files import write_json_atomic
from .official_class_names import READERS, SOURCES


def make_class_names(repo: str | Path, source: str, out: str | Path, ann_file: str | Path | None = None) -> dict:
    """Read the official lists of ``source`` (``coco`` | ``lvis``) from ``repo``, write ``out``
    ({"source", "classes": {name: [synonyms]}}) and, with ``ann_file``, check it against that
    annotation file's categories exactly as a dataset would. Returns the written object."""
    classes = READERS[source](repo)
    document = {"source": f"the official OV-SAM repository (methods/ovsam/README.md), {SOURCES[source]} (S-Lab License 1.0), via tools/make_class_names.py",
                "classes": classes}
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, document)
    if ann_file is not None:
        ann_path = Path(ann_file).expanduser()
        categories = load_coco_json(ann_path, ("categories",))["categories"]
        listed = read_class_names_file(out, categories, ann_path)
        missing = [c["name"] for c in categories if c["id"] not in listed]
        if missing:
            raise SambenchError(f"{out}: {len(missing)} categories of {ann_path} are not listed: {missing[:5]}")
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ovsam-repo", required=True, type=Path, help="checkout of the official OV-SAM repository, methods/ovsam/README.md (read, not run)")
    parser.add_argument("--source", choices=sorted(READERS), default="coco",
                        help="coco: CocoOVDataset's synonym lists (the official COCO vocabulary); "
                             "lvis: LVIS_CLASSES' synonyms (not used by the official LVIS runs)")
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write (pass it as dataset.class_names_file)")
    parser.add_argument("--ann-file", type=Path, help="optional: check the file against this annotation json")
    args = parser.parse_args(argv)
    try:
        document = make_class_names(args.ovsam_repo, args.source, args.out, args.ann_file)
    except SambenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classes = document["classes"]
    print(f"wrote {args.out}: {len(classes)} classes, up to {max(map(len, classes.values()))} synonyms each")
    return 0
