"""Export a sambench run in the authors' checkpoint layout (DIT, Open-Vocabulary SAM):
``python tools/export_official.py <run folder> --out <dir> [--ddp-prefix]``.

See ``sambench/cli/export_official.py`` for the files written.
"""

import argparse

from sambench.cli.export_official import export_run
from sambench.cli.launch import fail
from sambench.errors import SambenchError
from sambench.logging.console import setup_console_logging
from sambench.registry import load_plugins

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a sambench run folder (config.yaml + checkpoints/last.pt)")
    parser.add_argument("--out", required=True, help="folder for the exported files")
    parser.add_argument("--ddp-prefix", action="store_true",
                        help="DIT: prefix keys with 'module.' (the official test.py loads strictly under its 4-GPU DDP config)")
    args = parser.parse_args()
    setup_console_logging(rank=0)
    load_plugins()
    try:
        export_run(args.run, args.out, args.ddp_prefix)
    except SambenchError as exc:
        fail(exc)
