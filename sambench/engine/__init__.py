"""Training/evaluation engine: a short loop, hooks, checkpoints, DDP helpers."""
