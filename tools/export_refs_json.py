"""Export a RefCOCO refs pickle to JSON, which the RefCOCO adapters read instead when present.

    python tools/export_refs_json.py <data_root>/refcoco/'refs(unc).p' [out.json]

The pickle is read without running anything in it (only plain data is accepted); the default
output is the same folder and name with ``.json`` (``refs(unc).json``).
"""

import argparse
import sys
from pathlib import Path

from sambench.data.refer_json import export_refs_json
from sambench.errors import SambenchError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pickle", type=Path, help="refs file, e.g. data/refer/refcoco/'refs(unc).p'")
    parser.add_argument("out", type=Path, nargs="?", help="output json (default: beside it, refs(<split_by>).json)")
    args = parser.parse_args(argv)
    try:
        path = export_refs_json(args.pickle, args.out)
    except SambenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


sys.exit(main(sys.argv[1:]))
