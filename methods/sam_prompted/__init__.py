"""SAM prompted by ground-truth boxes / points, zero-shot or decoder fine-tuned (the framework's
proof method), README."""

from . import sam_prompted  # noqa: F401  (register the methods)
