"""Run the ``train`` / ``eval`` job of the command-line tools in the test process.

``run_job("train", *overrides)`` does what ``python tools/train.py *overrides`` does, minus a new
interpreter and a fresh ``import torch`` (5-20 s a call): the checks, process group and run stamp
of :func:`sambench.cli.launch.prepare` (it also composes the config), the run set-up that
``@hydra.main`` makes with sambench's config (``HydraConfig`` with ``runtime.output_dir`` = the
absolute ``hydra.run.dir``, the folder created, the job called without the ``hydra`` node; the
configs switch off Hydra's logging and ``.hydra/`` folder), then the job. A run stopped by a
preemption signal gives ``returncode`` 128 + the signal number. A user error
(:class:`~sambench.errors.SambenchError`) gives ``returncode`` 2 and launch's one ``error:`` line
on stderr; ``traceback=true`` re-raises it. Any other exception propagates (a subprocess would
exit 1 with its trace).

Process-wide state the run changes is put back afterwards, so the next call (and the next test)
starts as a fresh process would: Hydra's global state and run config, the run stamp, root logging
handlers (the run's ``<job>.log`` file handler is closed) and level, torch's default dtype,
determinism, TF32 and thread settings, the random states of ``random``, numpy and torch, the image
pixel limit, environment variables, the working directory and warning filters.

Command-line contracts (argv flags such as ``--cfg``/``-m``, Hydra's own argv handling, exit
codes of the interpreter, torchrun) stay with :func:`sambench.testing.run_tool`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

JOBS = ("train", "eval")


@dataclass
class JobResult:
    """What a tool run reports: the exit status it would have (0, or 2 for a user error), what
    it wrote to stderr (its log lines, the ``error:`` line), its metrics and run folder (None when
    it stopped before them)."""

    returncode: int
    stderr: str
    metrics: dict | None = None
    run_dir: Path | None = None
    stdout: str = ""


def run_job(job: str, *overrides: str) -> JobResult:
    """Run ``tools/<job>.py overrides...`` (``job``: ``train`` or ``eval``) in this process."""
    from sambench import dist
    from sambench.cli import jobs, launch
    from sambench.engine.preemption import Preempted
    from sambench.errors import SambenchError

    functions = {"train": jobs.train, "eval": jobs.evaluate_job}
    if job not in functions:
        raise ValueError(f"job={job!r}: expected one of {', '.join(JOBS)}")
    flags = [arg for arg in overrides if arg.startswith("-")]
    if flags:
        raise ValueError(f"run_job takes key=value overrides only ({' '.join(flags)}): use run_tool for flags")
    argv = list(overrides)
    stderr = _Tee(sys.stderr)
    metrics, run_dir, task_cfg = None, None, None
    with process_state_restored(), contextlib.redirect_stderr(stderr):
        try:
            cfg = launch.prepare(job, argv)
            task_cfg, run_dir = start_hydra_run(cfg)
            try:
                metrics = functions[job](task_cfg)
            finally:
                dist.shutdown()
        except Preempted as stop:  # not under submitit: the tool exits with 128 + the signal number
            return JobResult(128 + stop.signum, stderr.getvalue(), None, run_dir)
        except SambenchError as exc:
            if launch.wants_traceback(argv) or (task_cfg is not None and task_cfg.get("traceback")):
                raise
            print(launch.error_line(exc), file=sys.stderr, flush=True)
            return JobResult(launch.EXIT_USER_ERROR, stderr.getvalue(), None, run_dir)
    return JobResult(0, stderr.getvalue(), metrics, run_dir)


def start_hydra_run(cfg):
    """What Hydra's ``run_job`` does before calling the task: set ``HydraConfig`` (the run folder
    may interpolate ``${hydra:...}``), record the absolute run folder as ``runtime.output_dir``,
    create it (and enter it under ``hydra.job.chdir=true``). Returns the job's config (without the
    ``hydra`` node) and the run folder."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    HydraConfig.instance().set_config(cfg)
    run_dir = Path(os.path.abspath(str(OmegaConf.select(cfg, "hydra.run.dir"))))
    with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.hydra.job.chdir:
        os.chdir(run_dir)
    return task_cfg, run_dir


@contextlib.contextmanager
def process_state_restored():
    """Save the process-wide state a run changes (see the module docstring), start the run
    without a run stamp, Hydra state or reported-image note, as a fresh process would, and put
    everything back on exit."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from PIL import Image

    from sambench.cli import launch
    from sambench.data import base as data_base

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    global_hydra, hydra_cfg = GlobalHydra.instance().hydra, HydraConfig.instance().cfg
    stamp, reported = launch._stamp["value"], data_base._stored_pixels_reported["done"]
    pixels, pil_pixels = data_base.max_image_pixels(), Image.MAX_IMAGE_PIXELS
    environ, cwd, flags, rng = dict(os.environ), os.getcwd(), torch_flags(), rng_states()
    GlobalHydra.instance().clear()
    launch._stamp["value"] = None
    data_base._stored_pixels_reported["done"] = False
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        GlobalHydra.instance().clear()
        if global_hydra is not None:
            GlobalHydra.instance().initialize(global_hydra)
        HydraConfig.instance().cfg = hydra_cfg
        launch._stamp["value"], data_base._stored_pixels_reported["done"] = stamp, reported
        data_base.set_max_image_pixels(pixels)
        Image.MAX_IMAGE_PIXELS = pil_pixels
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update({key: value for key, value in environ.items() if os.environ.get(key) != value})
        os.chdir(cwd)
        set_torch_flags(flags)
        set_rng_states(rng)


def torch_flags() -> dict:
    """The torch settings a run may change: default dtype, deterministic algorithms, TF32 and
    matmul precision, cuDNN autotuning, threads, autograd."""
    return {
        "dtype": torch.get_default_dtype(),
        "deterministic": (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic),
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
    }


def set_torch_flags(flags: dict) -> None:
    """Put back what :func:`torch_flags` saved (only what changed: the TF32 setters warn)."""
    if torch_flags() == flags:
        return
    torch.set_default_dtype(flags["dtype"])
    enabled, warn_only = flags["deterministic"]
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    if torch.get_float32_matmul_precision() != flags["matmul_precision"]:
        torch.set_float32_matmul_precision(flags["matmul_precision"])
    if torch.backends.cuda.matmul.allow_tf32 != flags["matmul_tf32"]:
        torch.backends.cuda.matmul.allow_tf32 = flags["matmul_tf32"]
    if torch.backends.cudnn.allow_tf32 != flags["cudnn_tf32"]:
        torch.backends.cudnn.allow_tf32 = flags["cudnn_tf32"]
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags["cudnn"]
    if torch.get_num_threads() != flags["threads"]:
        torch.set_num_threads(flags["threads"])
    torch.set_grad_enabled(flags["grad"])


def rng_states() -> dict:
    """The global random states of ``random``, numpy, torch (and CUDA once it is initialised)."""
    return {
        "random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["random"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all(states["cuda"])


class _Tee:
    """A text stream that passes writes on to ``stream`` and keeps a copy (``getvalue``)."""

    def __init__(self, stream) -> None:
        self._stream, self._parts = stream, []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def getvalue(self) -> str:
        return "".join(self._parts)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
