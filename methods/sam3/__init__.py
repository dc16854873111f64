"""SAM 3 zero-shot: the reference row on every task (official sam3 package), its task adapters, README."""

from . import sam3  # noqa: F401  (register the method)
