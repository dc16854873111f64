"""DIT-SAM (E-DIT, L-DIT) and its text-prompt SAM baselines: token injection into the ViT,
the official referring-expression preprocessing, extra decoder layers, the authors' checkpoint
layout (``official_checkpoint.py``) and README."""

from . import dit  # noqa: F401  (register the methods)
