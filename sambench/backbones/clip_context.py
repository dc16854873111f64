"""CoOp (Zhou et al. 2022): learnable context vectors in front of each class name, passed
through CLIP's text encoder at every step (the baseline SSPrompt's efficiency is compared to).

Prompt tokens: ``<start> X … X <name>. <end>`` with ``num_context`` placeholder ``X`` tokens whose
embeddings are replaced by the shared learnable context (init N(0, 0.02), as CoOp).
The class names given at construction are ``forward``'s; :meth:`CoOpContext.encode` takes any
list of names with the same context (open-vocabulary training and evaluation use different
vocabularies: COCO-OV 48 classes in training, 65 at evaluation).
"""

from __future__ import annotations

import torch
from torch import nn


class CoOpContext(nn.Module):
    """Shared learnable context; ``forward(clip)`` -> C×D L2-normalised class embeddings of the
    construction's class names, ``encode(clip, names)`` -> N×D for any names."""

    def __init__(self, clip, class_names: list[str] | None = None, num_context: int = 16):
        super().__init__()
        self.num_context = num_context
        tokens = self._tokenize(clip, class_names).cpu() if class_names else None
        self.register_buffer("tokens", tokens, persistent=False)
        width = clip.clip.token_embedding.weight.shape[1]
        self.context = nn.Parameter(torch.randn(num_context, width) * 0.02)
        self._tokens_by_names: dict[tuple, torch.Tensor] = {}

    def _tokenize(self, clip, names: list[str]) -> torch.Tensor:
        prompts = [" ".join(["X"] * self.num_context) + f" {name}." for name in names]
        return clip.tokenize(prompts)

    def forward(self, clip) -> torch.Tensor:
        if self.tokens is None:
            raise ValueError("CoOpContext was built without class names: call encode(clip, names)")
        return self._encode_tokens(clip, self.tokens)

    def encode(self, clip, names: list[str]) -> torch.Tensor:
        """N×D L2-normalised embeddings of ``<start> context <name>. <end>`` for each name (the
        tokens of each name list are computed once)."""
        if not names:
            raise ValueError("CoOp needs at least one class name")
        key = (tuple(names), str(clip.device))
        if key not in self._tokens_by_names:
            self._tokens_by_names[key] = self._tokenize(clip, list(names))
        return self._encode_tokens(clip, self._tokens_by_names[key])

    def _encode_tokens(self, clip, tokens: torch.Tensor) -> torch.Tensor:
        embeddings = clip.clip.token_embedding(tokens).detach()
        context = self.context.to(embeddings.dtype).expand(len(embeddings), -1, -1)
        embeddings = torch.cat([embeddings[:, :1], context, embeddings[:, 1 + self.num_context :]], dim=1)
        return clip.encode_token_embeddings(embeddings, tokens)
