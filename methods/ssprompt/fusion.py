"""SSPrompt's fusion of default and learnable prompt embeddings (sambench design, see
``methods/ssprompt/README.md``): ``E = w ⊙ E_default + (1 − w) ⊙ E_learn`` with one scalar ``w`` per
prompt, ``E_learn`` initialised as a copy of ``E_default``.

Modes (the paper's ablation rows):
- ``default``: ``E = E_default`` (nothing learnt; zero-shot);
- ``learned``: ``w = 0`` (learnable embeddings only);
- ``average``: ``w = 0.5`` fixed (embeddings averaged with the defaults);
- ``weighted``: ``w = sigmoid(a)`` learnt, ``a`` initialised at 0 (``w = 0.5`` at step 0).
"""

from __future__ import annotations

import torch
from torch import nn

from sambench.errors import ConfigError

MODES = ("default", "learned", "average", "weighted")


class PromptFusion(nn.Module):
    """Fused prompt embeddings from frozen defaults (N×…) and learnable parameters."""

    def __init__(self, defaults: torch.Tensor, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"unknown prompt fusion mode '{mode}'; valid: {', '.join(MODES)}")
        self.mode = mode
        self.register_buffer("defaults", defaults.detach().clone())
        self.learned = nn.Parameter(defaults.detach().clone()) if mode != "default" else None
        self.weight_logits = nn.Parameter(torch.zeros(len(defaults))) if mode == "weighted" else None

    def weights(self) -> torch.Tensor:
        """N weights of the defaults in [0, 1]."""
        fixed = {"default": 1.0, "learned": 0.0, "average": 0.5}
        if self.mode in fixed:
            return self.defaults.new_full((len(self.defaults),), fixed[self.mode])
        return torch.sigmoid(self.weight_logits)

    def forward(self) -> torch.Tensor:
        if self.learned is None:
            return self.defaults
        w = self.weights().view(-1, *([1] * (self.defaults.dim() - 1)))
        return w * self.defaults + (1 - w) * self.learned
