"""Distributed helpers. ``torchrun`` sets the environment; without it everything is 1 process."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group under torchrun (nccl on GPU, gloo on CPU); return the device."""
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if launched_by_torchrun() and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    if use_cuda:
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for chaining)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def collective_device() -> torch.device:
    """Where tensors for collectives must live: CUDA under NCCL, CPU under gloo (or no DDP)."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
