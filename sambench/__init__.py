"""sambench: one framework to train and evaluate SAM adaptation methods."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root: ``conf/``, ``methods/`` and ``datasets/`` live here.
REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "conf"
