"""Exponential moving average of the trainable parameters."""

from __future__ import annotations

import contextlib

import torch


class ParameterEMA:
    """``shadow = d·shadow + (1-d)·param`` after every optimizer step.

    ``d = decay``, or with ``warmup`` ``d = min(decay, (n+1)/(n+10))`` for the n-th update
    (0-based; DIT's official EMA), so early averages follow the weights closely.
    ``swapped_in(params)`` temporarily puts the averages into the model (evaluation and the
    exported weights use them); the raw weights come back afterwards.
    """

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float, warmup: bool = False):
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.params = named_params
        self.shadow = {n: p.detach().clone().float() for n, p in named_params.items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (self.num_updates + 1) / (self.num_updates + 10))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, param in self.params.items():
            self.shadow[name].mul_(decay).add_(param.detach().float(), alpha=1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def swapped_in(self):
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(backup[name])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.num_updates = state["decay"], state.get("num_updates", 0)
        for name in self.shadow:
            self.shadow[name].copy_(state["shadow"][name])
