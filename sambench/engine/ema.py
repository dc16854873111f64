"""Exponential moving average of the trainable parameters."""

from __future__ import annotations

import contextlib

import torch


class ParameterEMA:
    """``shadow = decay·shadow + (1-decay)·param`` after every optimizer step.

    ``swapped_in(params)`` temporarily puts the averages into the model (evaluation and the
    exported weights use them); the raw weights come back afterwards.
    """

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = decay
        self.params = named_params
        self.shadow = {n: p.detach().clone().float() for n, p in named_params.items()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.params.items():
            self.shadow[name].mul_(self.decay).add_(param.detach().float(), alpha=1.0 - self.decay)

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
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for name in self.shadow:
            self.shadow[name].copy_(state["shadow"][name])
