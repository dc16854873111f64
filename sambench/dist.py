"""Distributed helpers. ``torchrun`` sets the environment, or a submitit task exports it from its
job environment (:mod:`sambench.cluster`); without either everything is 1 process."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time

import torch
import torch.distributed as dist

from sambench import cluster
from sambench.errors import ConfigError, SambenchError

DEFAULT_TIMEOUT_S = 1800.0  # torch's default; rank 0 alone may take minutes (e.g. LVIS mask AP)
_timeout = {"seconds": DEFAULT_TIMEOUT_S}
log = logging.getLogger(__name__)


class DistributedError(SambenchError):
    """A collective that timed out or lost a peer: another rank hung, died or is far behind."""


@contextlib.contextmanager
def waiting(what: str):
    """Around a collective (or a step whose backward all-reduces): every ``min(60 s, timeout/4)``
    spent inside, log which rank is still waiting for what; a timeout or a lost peer becomes a
    :class:`DistributedError` naming the rank, the collective and the time waited."""
    if not is_distributed():
        yield
        return
    start, period = time.monotonic(), min(60.0, _timeout["seconds"] / 4)
    done = threading.Event()

    def report():
        while not done.wait(period):
            log.warning("rank %d has waited %.0f s for the other ranks at %s (timeout %.0f s: "
                        "trainer.collective_timeout)", rank(), time.monotonic() - start, what, _timeout["seconds"])

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    except RuntimeError as exc:  # gloo/NCCL errors (DistBackendError is a RuntimeError)
        text = str(exc)
        lost = any(s in text for s in ("Connection closed", "Connection reset", "Broken pipe", "ECONNRESET"))
        if not (lost or "imed out" in text or "timeout" in text.lower()):
            raise
        cause = "lost the connection to another rank (it died)" if lost else "timed out: another rank is hung or far behind"
        raise DistributedError(f"rank {rank()} waited {time.monotonic() - start:.0f} s at {what} and {cause} "
                               f"(trainer.collective_timeout={_timeout['seconds']:g} s)") from None
    finally:
        done.set()


def launched_by_torchrun() -> bool:
    """True when the rank variables are set: by torchrun, or exported from a submitit task's placement."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def cuda_index() -> int:
    """This rank's GPU: ``LOCAL_RANK`` when the process sees every GPU of its node, 0 when it
    sees exactly one (a scheduler that binds one GPU per task)."""
    local, visible = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if local < visible:
        return local
    if visible == 1:
        return 0
    raise ConfigError(f"local rank {local} but this process sees {visible} GPUs (CUDA_VISIBLE_DEVICES="
                      f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): run one task per GPU, each seeing "
                      "either all GPUs of its node or exactly one")


def backend_and_device(device: str = "auto") -> tuple[str, torch.device]:
    """The process-group backend and this rank's device for the setting ``device``: ``auto``
    (CUDA when available, else CPU), ``cuda`` (refused without CUDA) or ``cpu``. CUDA gives
    ``("nccl", cuda:<LOCAL_RANK>)``, the CPU ``("gloo", cpu)``."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but CUDA is not available (torch.cuda.is_available() is false: no GPU, "
                          "no driver or a CPU build of torch); use trainer.device=auto or cpu")
    if torch.cuda.is_available() and device in ("auto", "cuda"):
        return "nccl", torch.device("cuda", cuda_index())
    return "gloo", torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Initialise the process group under torchrun or in a submitit task of a job with several
    tasks (see :func:`backend_and_device`), once per process; return the device. ``timeout_s``:
    how long a collective waits for the other ranks before failing."""
    placement = None if dist.is_initialized() else cluster.submitit_placement()
    if placement is not None and placement.world_size > 1:
        cluster.export_placement(placement)
    backend, chosen = backend_and_device(device)
    if placement is not None and chosen.type == "cuda":
        warn_unused_gpus(placement.local_world_size)
    if launched_by_torchrun() and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        _timeout["seconds"] = timeout_s
    return chosen


def warn_unused_gpus(tasks_per_node: int) -> None:
    """A submitit job with fewer tasks than GPUs per node uses one GPU per task and leaves the
    rest idle (sambench starts no processes of its own; Hydra issue 2231)."""
    visible = torch.cuda.device_count()
    if visible > tasks_per_node:
        log.warning("this task sees %d GPUs but the job runs %d task%s per node: sambench uses one GPU per task; "
                    "set hydra.launcher.tasks_per_node=%d to use them all", visible, tasks_per_node,
                    "s" * (tasks_per_node > 1), visible)


def training_device(device: str = "auto") -> torch.device:
    """The device for the setting ``device`` in a process whose group (if any) is already
    initialised; refuses a setting that disagrees with the group's backend."""
    backend, chosen = backend_and_device(device)
    if is_distributed() and dist.get_backend() != backend:
        raise ConfigError(f"trainer.device={device} needs a {backend} process group but this one uses "
                          f"{dist.get_backend()} (the group is set up from the config composed before the run)")
    return chosen


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier(what: str = "a barrier") -> None:
    if is_distributed():
        with waiting(what):
            dist.barrier()


def all_gather_objects(obj, what: str = "a gather of results") -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    with waiting(what):
        dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    with waiting("a broadcast from rank 0"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; returned for chaining)."""
    if is_distributed():
        with waiting("a sum over ranks"):
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
