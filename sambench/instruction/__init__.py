"""Text-instructed SAM (DIT-SAM and its text-prompt baselines): token injection into the ViT,
referring-expression preprocessing and extra decoder layers."""
