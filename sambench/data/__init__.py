"""Shared dataset code: base class, safe file access, loaders. Adapters live in ``datasets/``."""
