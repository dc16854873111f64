"""Evaluators (``reset / process / compute``), one file per metric family."""
