"""SSPrompt (spatial + semantic prompt learning on a frozen SAM + CLIP) and its baselines:
default prompts, their learnable fusion, CoOp context, the mask-classification head, README."""

from . import ssprompt  # noqa: F401  (register the methods)
