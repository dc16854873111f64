"""Learning-rate schedules as multipliers of the base LR (used through ``LambdaLR``)."""

from __future__ import annotations

import math

from sambench.errors import ConfigError

SCHEDULES = ("constant", "cosine", "poly", "step")


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    name: str = "constant",
    warmup_steps: int = 0,
    warmup_start: float = 0.001,
    min_ratio: float = 0.0,
    power: float = 0.9,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier at ``step`` (0-based): linear warm-up from ``warmup_start``, then the schedule.

    cosine: ``min_ratio + (1-min_ratio)·½(1+cos(π·t))``; poly: ``(1-t)^power`` (floored at
    ``min_ratio``); step: ``gamma^(#milestones passed)``; t = progress after warm-up in [0, 1].
    """
    if name not in SCHEDULES:
        raise ConfigError(f"unknown trainer.schedule.name '{name}'; valid: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    if name == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if name == "poly":
        return max(min_ratio, (1.0 - t) ** power)
    if name == "step":
        return gamma ** sum(step >= m for m in milestones)
    return 1.0


def epochs_to_steps(schedule: dict, steps_per_epoch: int) -> dict:
    """Turn the epoch-based keys ``warmup_epochs`` / ``milestone_epochs`` into steps (papers
    state schedules in epochs; the scheduler steps once per optimizer update)."""
    warmup_epochs = schedule.pop("warmup_epochs", None)
    milestone_epochs = schedule.pop("milestone_epochs", None) or []
    if warmup_epochs is not None:
        schedule["warmup_steps"] = round(warmup_epochs * steps_per_epoch)
    if milestone_epochs:
        schedule["milestones"] = [*schedule.get("milestones", []), *(round(e * steps_per_epoch) for e in milestone_epochs)]
    return schedule
