"""What a run costs: parameter counts, peak memory, step time and throughput.

The training loop times every optimizer step (data loading, forward, backward, optimizer step;
hooks such as evaluation and checkpoint saving excluded), the loss-logging hook turns that into
``train/step_time_s`` / ``train/samples_per_s`` per logging window, and the jobs write the run's
totals to ``cost.json`` beside ``metrics.json`` (see :data:`COST_KEYS`); ``tools/summarize.py``
shows them as leaderboard columns. They live in their own file because they differ from run to
run even where the metrics are identical (a resumed run, DDP vs one rank, eval twice).
"""

from __future__ import annotations

import resource

import torch
from torch import nn

#: the numbers of ``cost.json``, in the order the leaderboard shows them
COST_KEYS = {
    "params_trainable": "parameters with requires_grad (what the optimizer updates and checkpoints store)",
    "params_total": "all parameters of the method (each shared tensor once)",
    "peak_mem_mib": "peak memory of rank 0, MiB: CUDA max allocated on a GPU, else the process's peak RSS",
    "samples_per_s": "training samples per second over all ranks (training steps only)",
    "step_time_s": "seconds per optimizer step, mean over the run's steps (data loading included, hooks not)",
}


def peak_rss_mib() -> float:
    """This process's peak resident set so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mib(device: torch.device | str) -> float:
    """Peak memory so far, MiB: ``torch.cuda.max_memory_allocated`` on a CUDA device, else the
    process's peak RSS (CPU: everything the process ever held, data and Python included)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mib()


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """``params_trainable`` (``requires_grad``) and ``params_total`` of ``module``."""
    params = list(module.parameters())
    return {"params_trainable": sum(p.numel() for p in params if p.requires_grad),
            "params_total": sum(p.numel() for p in params)}


def model_cost(module: nn.Module, device: torch.device | str) -> dict[str, float]:
    """Parameter counts and peak memory (an evaluation run's cost)."""
    return {**parameter_counts(module), "peak_mem_mib": peak_memory_mib(device)}
