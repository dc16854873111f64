"""CoOp (Zhou et al. 2022): learnable context vectors in front of each class name, passed
through CLIP's text encoder at every step (the baseline SSPrompt's efficiency is compared to).

Prompt tokens: ``<start> X … X <name>. <end>`` with ``num_context`` placeholder ``X`` tokens whose
embeddings are replaced by the shared learnable context (init N(0, 0.02), as CoOp).
"""

from __future__ import annotations

import torch
from torch import nn


class CoOpContext(nn.Module):
    """Shared learnable context; ``forward(clip)`` -> C×D L2-normalised class embeddings."""

    def __init__(self, clip, class_names: list[str], num_context: int = 16):
        super().__init__()
        self.num_context = num_context
        prompts = [" ".join(["X"] * num_context) + f" {name}." for name in class_names]
        self.register_buffer("tokens", clip.tokenize(prompts).cpu(), persistent=False)
        width = clip.clip.token_embedding.weight.shape[1]
        self.context = nn.Parameter(torch.randn(num_context, width) * 0.02)

    def forward(self, clip) -> torch.Tensor:
        embeddings = clip.clip.token_embedding(self.tokens).detach()
        context = self.context.to(embeddings.dtype).expand(len(embeddings), -1, -1)
        embeddings = torch.cat([embeddings[:, :1], context, embeddings[:, 1 + self.num_context :]], dim=1)
        return clip.encode_token_embeddings(embeddings, self.tokens)
