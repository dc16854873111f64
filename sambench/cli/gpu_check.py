"""GPU check: ``python tools/gpu_check.py [--device cuda|cpu] [--tiny] [--sections ...] [--out check.md]``.

For a machine with GPUs (under 8 minutes on one H100); Markdown tables on stdout (and in
``--out``), progress on stderr. Sections: 1. environment; 2. collectives (NCCL across the local
GPUs, gloo with 2 processes on CPU); 3. 1-process vs N-process evaluation equality (``tools/eval.py``
on a short ``tools/train.py`` run of the embedded default); 4. mixed precision (fp32 / bf16 / fp16
steps of the embedded default); 5. each method at its papers' sizes, random weights: step time,
inference ms per image and peak memory beside the papers' figures (``gpu_check_methods``); 6. PEFT
cost: full fine-tuning vs LoRA vs frozen encoder for ``sam_prompted`` on SAM ViT-B at 1024², fp32 and
bf16 (``tools/bench_peft.py``'s table: step time, peak memory, trainable parameters, ratios).

Exit status 1 when a check FAILS (a collective returns a wrong value, the 1-vs-N metrics differ, a
precision gives a non-finite loss, a tool or worker crashes); timings are never judged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sambench import REPO_ROOT
from sambench.cli.bench import TRAIN_SCRIPT, ToolFailed, run_script
from sambench.cli.bench_report import markdown_table, positive_int, progress as report_progress
from sambench.cli.gpu_check_methods import WORKERS
from sambench.cli.gpu_check_report import (
    collectives_table, compare_metrics, final_loss, methods_table, ms_per_step, number, paper_comparisons, verdict,
)

EVAL_SCRIPT = REPO_ROOT / "tools" / "eval.py"
SECTIONS = ("env", "collectives", "eval", "precision", "methods", "peft")
PRECISIONS = ("fp32", "bf16", "fp16")
WORKER_TIMEOUT_S = 420


def progress(message: str) -> None:
    report_progress(message, tag="gpu-check")


def num_processes(device: str) -> int:
    """Processes of the multi-process sections: one per GPU, or 2 gloo ranks on CPU."""
    return torch.cuda.device_count() if device == "cuda" else 2


def read_json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----- 1. environment --------------------------------------------------------------------------------
def section_env(args) -> tuple[str, bool]:
    from sambench.cli.build import environment

    env = environment()
    nccl = "n/a"
    if args.device == "cuda":
        version = torch.cuda.nccl.version()  # a (major, minor, patch) tuple in recent torch, an int before
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    rows = [["torch", torch.__version__], ["CUDA (torch build)", torch.version.cuda or "none"], ["NCCL", nccl],
            ["sambench git sha", env["git_sha"] or "unknown"], ["CPU cores", os.cpu_count()]]
    if args.device == "cuda":
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append([f"GPU {i}", f"{props.name}, {props.total_memory / 2**30:.1f} GiB"])
    else:
        rows.append(["device", "CPU" + (" (CUDA available but --device cpu)" if torch.cuda.is_available() else "")])
    rows.append(["presets", "tiny (--tiny: test sizes, timings meaningless)" if args.tiny else "papers' sizes"])
    return markdown_table(["item", "value"], rows), True


# ----- 2. collectives --------------------------------------------------------------------------------
def section_collectives(args, work: Path) -> tuple[str, bool]:
    nproc = num_processes(args.device)
    backend = "nccl" if args.device == "cuda" else "gloo"
    out = work / "collectives.json"
    progress(f"collectives: {backend}, {nproc} process(es)")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "sambench.cli.gpu_check_collectives", "--backend", backend, "--out", str(out),
               "--mib", str(16 if args.tiny else 256), "--repeats", str(args.repeats)]
    child = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    if child.returncode != 0 or not out.is_file():
        detail = child.stderr.strip().splitlines()[-1:] or ["no output"]
        return markdown_table(["check", "result", "detail"], [["collectives worker", "FAIL", detail[0]]]), False
    return collectives_table(json.loads(out.read_text()), cross_gpu=args.device == "cpu" or nproc > 1)


# ----- 3. 1 vs N evaluation ----------------------------------------------------------------------------
def section_eval(args, work: Path) -> tuple[str, bool]:
    nproc = num_processes(args.device)
    headers = ["run", "processes", "mIoU", "images", "wall s", "result"]
    if nproc < 2:
        return markdown_table(headers, [["1 vs N GPUs", 1, "", "", "", "skipped: needs >= 2 GPUs"]]), True
    common = [f"trainer.device={args.device}", "dataset.num_images=5"]
    threads = 1 if args.device == "cpu" else None  # torchrun's ranks run 1 thread: the same sums on CPU
    train_dir = train_run(args, work, "fp32")
    rows, metrics = [], []
    for processes in (1, nproc):
        run_dir = work / f"eval-{processes}"
        progress(f"1 vs {nproc}: tools/eval.py with {processes} process(es) ...")
        seconds = run_script(EVAL_SCRIPT, [*common, f"ckpt={train_dir}", f"hydra.run.dir={run_dir}", "cache.enabled=false",
                                           "trainer.eval.batch_size=1"], nproc=processes, threads=threads)
        metrics.append(json.loads((run_dir / "metrics.json").read_text()))
        rows.append(["tools/eval.py ckpt=<run>", processes, number(metrics[-1].get("mIoU"), 4),
                     metrics[-1].get("num_images", "?"), f"{seconds:.1f}", ""])
    passed, detail = compare_metrics(*metrics)
    rows.append(["metrics.json equal", f"1 vs {nproc}", "", "", "", f"{verdict(passed)}: {detail}"])
    return markdown_table(headers, rows), passed


# ----- 4. mixed precision ------------------------------------------------------------------------------
def train_run(args, work: Path, precision: str) -> Path:
    """A short ``tools/train.py`` run of the embedded default at ``precision`` (done once: the fp32
    run is also section 3's checkpoint); its own fresh cache, so the first epoch runs the encoder."""
    run_dir = work / f"train-{precision}"
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        progress(f"tools/train.py, trainer.precision={precision}, {args.train_steps} steps ...")
        run_script(TRAIN_SCRIPT, [f"hydra.run.dir={run_dir}", f"trainer.precision={precision}",
                                  f"trainer.max_steps={args.train_steps}", "dataset.num_images=5",
                                  f"trainer.device={args.device}", "trainer.eval.at_end=false", "logger.log_every=1",
                                  f"cache.dir={work / f'cache-{precision}'}"])
    return run_dir


def section_precision(args, work: Path) -> tuple[str, bool]:
    rows, passed = [], True
    for precision in PRECISIONS:
        if precision == "fp16" and args.device == "cpu":
            rows.append([precision, "", "", "n/a on CPU", "fp16 autocast runs slow reference kernels on CPU (~40 s/step "
                         "on 2 cores); checked on GPU"])
            continue
        try:
            run_dir = train_run(args, work, precision)
        except ToolFailed as exc:
            rows.append([precision, "", "", "FAIL", str(exc).strip().splitlines()[-1][:200]])
            passed = False
            continue
        records = read_json_lines(run_dir / "log.jsonl")
        loss = final_loss(records)
        finite = math.isfinite(loss)
        passed &= finite
        rows.append([precision, number(loss, 4), number(ms_per_step(records)), verdict(finite), ""])
    return markdown_table(["trainer.precision", "final loss", "ms/step", "finite loss", "detail"], rows), passed


# ----- 5. methods ------------------------------------------------------------------------------------------
def run_method_worker(workers: list[str], args) -> list[dict]:
    """The rows of ``workers``, measured one after the other in one fresh process."""
    command = [sys.executable, "-m", "sambench.cli.gpu_check_methods", "--worker", ",".join(workers), "--device", args.device,
               "--steps", str(args.steps), "--repeats", str(args.repeats), *(["--tiny"] if args.tiny else [])]
    try:
        child = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        error = None if child.returncode == 0 else (child.stderr.strip().splitlines() or ["exit status"])[-1][:200]
    except subprocess.TimeoutExpired:
        error = f"timed out after {WORKER_TIMEOUT_S} s"
    if error:
        return [{"method": name, "error": error} for worker in workers for name in WORKERS[worker][0]]
    return json.loads(child.stdout.strip().splitlines()[-1])


def section_methods(args) -> tuple[str, bool]:
    """One fresh process per method (peaks do not mix); with ``--tiny`` one for all (a test run)."""
    rows = []
    for workers in [args.methods] if args.tiny else [[worker] for worker in args.methods]:
        progress(f"method{'s' * (len(workers) > 1)} {', '.join(workers)}: fresh process on {args.device} ...")
        started = time.perf_counter()
        rows += run_method_worker(workers, args)
        progress(f"{', '.join(workers)}: {time.perf_counter() - started:.0f} s")
    text = methods_table(rows, args.tiny) + "\n\n" + paper_comparisons(rows, shared_process=args.tiny)
    return text, not any("error" in r for r in rows)


# ----- 6. PEFT cost ------------------------------------------------------------------------------------------
def section_peft(args) -> tuple[str, bool]:
    """``tools/bench_peft.py`` (its own process; on CUDA all rows in it, peaks reset per row): SAM
    ViT-B at 1024², fp32 and bf16; ``--tiny``: sam_tiny, small masks, 3 rows, fp32 only."""
    if args.tiny:
        runs = [["--backbone", "sam_tiny", "--image-size", "128", "--instances", "2", "--rows", "full,lora,frozen",
                 "--shared-process"]]
    else:
        runs = [["--backbone", "sam_vit_b", "--precision", precision] for precision in ("fp32", "bf16")]
    parts = []
    for extra in runs:
        command = [sys.executable, "-m", "sambench.cli.bench_peft", "--device", args.device, "--steps", str(args.steps), *extra]
        progress(f"PEFT cost: {' '.join(command[3:])} ...")
        child = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
        if child.returncode != 0:
            detail = (child.stderr.strip().splitlines() or ["exit status"])[-1][:200]
            return markdown_table(["check", "result", "detail"], [["bench_peft", "FAIL", detail]]), False
        parts.append(child.stdout.strip().replace("## PEFT cost", "### PEFT cost"))
    return "\n\n".join(parts), True


# ----- entry point -------------------------------------------------------------------------------------------
TITLES = {
    "env": "1. Environment",
    "collectives": "2. Collectives",
    "eval": "3. 1 vs N processes: evaluation equality",
    "precision": "4. Mixed precision (embedded default)",
    "methods": "5. Methods at the papers' sizes, random weights",
    "peft": "6. PEFT: full fine-tuning vs LoRA vs frozen encoder (sam_prompted)",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny presets everywhere (CPU test run; timings meaningless)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--methods", default=",".join(WORKERS), help=f"comma-separated subset of {','.join(WORKERS)}")
    parser.add_argument("--steps", type=positive_int, default=None, help="timed training steps per method (default 5; --tiny 1)")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed inference calls per method (default 5; --tiny 1)")
    parser.add_argument("--train-steps", type=positive_int, default=None,
                        help="steps of the tools/train.py runs of sections 3 and 4 (default 10; --tiny 6)")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available (use --device cpu)")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for name, chosen, valid in (("--sections", args.sections, SECTIONS), ("--methods", args.methods, WORKERS)):
        unknown = [c for c in chosen if c not in valid]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    args.steps = args.steps or (1 if args.tiny else 5)
    args.repeats = args.repeats or (1 if args.tiny else 5)
    args.train_steps = args.train_steps or (6 if args.tiny else 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    parts, failed = ["# sambench GPU check\n"], []
    with tempfile.TemporaryDirectory(prefix="sambench-gpu-check-") as tmp:
        work = Path(tmp)
        for section in SECTIONS:
            if section not in args.sections:
                continue
            try:
                if section == "env":
                    text, passed = section_env(args)
                elif section == "methods":
                    text, passed = section_methods(args)
                elif section == "peft":
                    text, passed = section_peft(args)
                else:
                    text, passed = {"collectives": section_collectives, "eval": section_eval,
                                    "precision": section_precision}[section](args, work)
            except (ToolFailed, subprocess.TimeoutExpired) as exc:
                text, passed = markdown_table(["check", "result", "detail"], [[section, "FAIL", str(exc).strip().splitlines()[-1][:200]]]), False
            if not passed:
                failed.append(section)
            parts.append(f"## {TITLES[section]}\n\n{text}\n")
    parts.append(f"Result: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}; "
                 f"{time.perf_counter() - started:.0f} s on {args.device}{' (tiny presets)' if args.tiny else ''}.\n")
    report = "\n".join(parts)
    print(report, flush=True)
    if args.out:
        Path(args.out).write_text(report)
    return 1 if failed else 0
