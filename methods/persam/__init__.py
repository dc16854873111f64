"""PerSAM / PerSAM-F: location prior, target-guided decoder, the fitted scale weights, README."""

from . import persam  # noqa: F401  (register the methods)
