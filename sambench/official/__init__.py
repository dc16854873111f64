"""Import and export of the authors' released checkpoints (official key layouts)."""
