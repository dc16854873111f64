"""Prompt learning for semantic segmentation with a frozen SAM + CLIP (SSPrompt and baselines):
default prompts, their learnable fusion, CoOp context, and the mask-classification head."""
