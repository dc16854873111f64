"""The collectives check of ``tools/gpu_check.py``, run under torchrun (one process per GPU):
``python -m torch.distributed.run --standalone --nproc_per_node=N -m sambench.cli.gpu_check_collectives
--backend nccl|gloo --out result.json [--mib 256]``.

Each rank runs all_reduce (sum of rank+1 over a tensor: the exact value n(n+1)/2 is expected
everywhere), all_gather_object, broadcast_object_list and barrier, then times all_reduce of a
``--mib`` MiB float32 tensor. Every rank's verdicts are gathered; rank 0 writes them to ``--out``
(JSON: ``checks`` = [{name, passed, detail}], ``bandwidth`` = {mib, ms, algbw_gbs, busbw_gbs}).
NCCL: rank r uses ``cuda:<LOCAL_RANK>``; gloo: the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from sambench.cli.bench_report import timed_ms


def check_all_reduce(world: int, rank: int, device: torch.device) -> tuple[bool, str]:
    tensor = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    expected = world * (world + 1) / 2
    values = tensor.unique().tolist()
    return values == [expected], f"sum of rank+1 over {world} rank(s): {values} (expected {expected:g})"


def check_all_gather_object(world: int, rank: int) -> tuple[bool, str]:
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "text": f"rank {rank}"})
    expected = [{"rank": r, "text": f"rank {r}"} for r in range(world)]
    return gathered == expected, f"{world} dict(s) gathered in rank order" if gathered == expected else f"got {gathered}"


def check_broadcast_object_list(rank: int) -> tuple[bool, str]:
    payload = {"from": 0, "values": [1, 2.5, "three"]}
    objects = [payload if rank == 0 else None]
    dist.broadcast_object_list(objects, src=0)
    return objects[0] == payload, "rank 0's object received" if objects[0] == payload else f"got {objects[0]}"


def check_barrier(device: torch.device) -> tuple[bool, str]:
    start = time.perf_counter()
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
    return True, f"returned after {(time.perf_counter() - start) * 1000:.1f} ms"


def all_reduce_bandwidth(world: int, device: torch.device, mib: int, repeats: int) -> dict:
    """Median time of an all_reduce of ``mib`` MiB float32; algorithm bandwidth = bytes / time, bus
    bandwidth = algbw × 2(n−1)/n (nccl-tests' convention; 0 for one rank: nothing crosses a link)."""
    tensor = torch.ones(mib * 2**20 // 4, device=device)
    dist.all_reduce(tensor)  # warm-up: connection set-up
    seconds = statistics.median(timed_ms(lambda: dist.all_reduce(tensor), device) for _ in range(repeats)) / 1000
    algbw = mib * 2**20 / seconds / 1e9
    return {"mib": mib, "ms": seconds * 1000, "algbw_gbs": algbw, "busbw_gbs": algbw * 2 * (world - 1) / world}


def run(backend: str, mib: int, repeats: int) -> dict:
    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=timedelta(seconds=120),
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        checks = [("all_reduce (sum, exact value)", *check_all_reduce(world, rank, device)),
                  ("all_gather_object", *check_all_gather_object(world, rank)),
                  ("broadcast_object_list", *check_broadcast_object_list(rank)),
                  ("barrier", *check_barrier(device))]
        bandwidth = all_reduce_bandwidth(world, device, mib, repeats)
        verdicts: list = [None] * world
        dist.all_gather_object(verdicts, [passed for _, passed, _ in checks])
    finally:
        dist.destroy_process_group()
    rows = [{"name": name, "passed": all(v[i] for v in verdicts), "detail": detail}
            for i, (name, _, detail) in enumerate(checks)]
    return {"rank": rank, "world_size": world, "backend": backend, "checks": rows, "bandwidth": bandwidth}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("nccl", "gloo"), required=True)
    parser.add_argument("--out", required=True, help="JSON file written by rank 0")
    parser.add_argument("--mib", type=int, default=256, help="all_reduce size for the bandwidth (MiB)")
    parser.add_argument("--repeats", type=int, default=5, help="timed all_reduce calls (median)")
    args = parser.parse_args(argv)
    result = run(args.backend, args.mib, args.repeats)
    if result["rank"] == 0:
        with open(args.out, "w") as file:
            json.dump(result, file)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
