"""Start a Hydra job with sambench's checks and error reporting.

Before Hydra runs the job: refuse ``--multirun`` under torchrun, check config-group choices
(unknown names list the valid ones and the closest match), compose the config once and check
it, initialise DDP from that composed config (an experiment that sets ``trainer.device=cpu``
gets a gloo group on a GPU host) and agree on one run-folder stamp across ranks (the broadcast
needs the group, Hydra makes the folder from the stamp). A task of Hydra's submitit launcher
(``-m hydra/launcher=submitit_*``) instead sets up its group inside the job, from submitit's job
environment (:mod:`sambench.cluster`); its stamp comes from the submitter's config. A run stopped
by a preemption signal (:mod:`sambench.engine.preemption`) is requeued under submitit, else it
exits with 128 + the signal number. User errors (:class:`SambenchError`) print one line
``error: ...`` and exit with status 2; ``traceback=true`` (or ``debug=traceback``) shows the trace.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Callable

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sambench import CONFIG_DIR, REPO_ROOT
from sambench.cli.build import check_config
from sambench import cluster, dist
from sambench.engine.preemption import Preempted
from sambench.errors import ConfigError, SambenchError
from sambench.registry import closest

EXIT_USER_ERROR = 2
GROUPS = ("method", "dataset", "backbone", "trainer", "logger", "experiment", "debug")
_stamp = {"value": None}


def _stamp_resolver() -> str:
    if _stamp["value"] is None:
        _stamp["value"] = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return _stamp["value"]


# Cached per config: Hydra copies the resolver cache of the sweep's master config into every job's
# config (``load_sweep_config``), so a submitit task (another process, maybe another machine, or a
# requeued job days later) resolves the same stamp, hence the same run folder, as the submitter.
OmegaConf.register_new_resolver("sambench_stamp", _stamp_resolver, replace=True, use_cache=True)
# ${sambench_repo:} = the repository root, for data bundled with the code (e.g. the PerSeg sample)
OmegaConf.register_new_resolver("sambench_repo", lambda: str(REPO_ROOT), replace=True)


def wants_traceback(argv: list[str]) -> bool:
    return any(a.lstrip("+") in ("traceback=true", "traceback=True", "debug=traceback") for a in argv)


def check_chdir(value) -> None:
    """``hydra.job.chdir=true`` is refused: relative paths (data roots, ``ckpt=``, checkpoints)
    are read from where the run was launched, and the run folder is already where every file goes."""
    if str(value).lower() == "true":
        raise ConfigError("hydra.job.chdir=true is not supported: sambench reads relative paths (dataset.root, ckpt=, "
                          "backbone.checkpoint) from where you launch and writes every output into the run folder "
                          "itself; drop the override (also under hydra/launcher=submitit_*)")


def check_group_choices(argv: list[str]) -> None:
    """Fail on ``group=name`` overrides whose ``conf/group/name.yaml`` does not exist."""
    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if key == "hydra.job.chdir":
            check_chdir(value)
        if not sep or key not in GROUPS or value in ("null", ""):
            continue
        valid = sorted(p.stem for p in (CONFIG_DIR / key).glob("*.yaml"))
        if value not in valid:
            raise ConfigError(f"unknown {key} '{value}'{closest(value, valid)}; valid: {', '.join(valid)}")


def seconds(value) -> float:
    if value is None:
        return dist.DEFAULT_TIMEOUT_S
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ConfigError(f"trainer.collective_timeout={value!r}: expected a number of seconds > 0")
    return timeout


def compose_checked(config_name: str, argv: list[str]) -> DictConfig:
    """Compose once before Hydra does, so its own errors (override syntax, keys not in the
    config, missing defaults) become one ``error:`` line and exit 2 like every user error.
    Then the typed checks of :func:`check_config`. Returns the config with its ``hydra`` node
    (the run folder is left unresolved: it holds the run stamp)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name, overrides=argv, return_hydra_config=True)
        check_chdir(cfg.hydra.job.chdir)
        check_config(cfg)  # before Hydra makes the run folder: a bad value leaves nothing behind
        return cfg
    except (HydraException, OmegaConfBaseException) as exc:  # also a value that cannot be resolved
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("    ")]
        raise ConfigError(" ".join(lines[:3]) or type(exc).__name__) from None


def prepare(config_name: str, argv: list[str]) -> DictConfig | None:
    """Checks, the process group (set up once, from the composed config) and the run stamp;
    returns the composed config (``sambench.testing.run_job`` runs the job on it in-process).
    Command lines with flags (``-m``, ``--cfg``, ``--help``, ...) are left to Hydra, which
    composes them its own way: they run without torchrun only (no process group; None)."""
    check_group_choices(argv)
    if any(arg.startswith("-") for arg in argv):
        if dist.launched_by_torchrun():
            flags = " ".join(a for a in argv if a.startswith("-"))
            raise ConfigError(f"command-line flags ({flags}) cannot be used under torchrun: the process group is set "
                              "up from the config composed before Hydra runs; pass key=value overrides only")
        return None
    cfg = compose_checked(config_name, argv)
    dist.init_distributed(cfg.trainer.get("device") or "auto", seconds(cfg.trainer.get("collective_timeout")))
    _stamp["value"] = dist.broadcast_object(_stamp_resolver())
    return cfg


def user_error_line(exc: BaseException) -> str:
    """One line for a user error (DataLoader workers wrap messages in their traceback)."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def error_line(exc: BaseException) -> str:
    """What a user error prints before the exit with status 2."""
    return f"error: {user_error_line(exc)}"


def fail(exc: BaseException) -> None:
    print(error_line(exc), file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


def after_preemption(stop: Preempted) -> None:
    """The checkpoint is saved: under submitit hand over to its requeue (task 0 exits there; the
    other tasks return); otherwise exit with 128 + the signal number, as a process killed by it would."""
    if cluster.hand_over(stop.signum):
        return None
    raise SystemExit(128 + stop.signum)


def launch(job: Callable[[DictConfig], object], config_name: str) -> None:
    """Run ``job(cfg)`` as a Hydra app over ``conf/<config_name>.yaml``."""
    argv = sys.argv[1:]
    traceback = wants_traceback(argv)
    try:
        if dist.launched_by_torchrun() and any(a in ("-m", "--multirun") for a in argv):
            raise ConfigError("--multirun cannot run under torchrun (each rank would start its own sweep); "
                              "launch one torchrun per configuration instead")
        prepare(config_name, argv)
    except SambenchError as exc:
        if traceback:
            raise
        fail(exc)

    @hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")
    def _main(cfg: DictConfig):
        try:
            check_chdir(HydraConfig.get().job.chdir)
            # a submitit task (no torchrun, no prepare()) sets up its group here; elsewhere a no-op
            dist.init_distributed(cfg.trainer.get("device") or "auto", seconds(cfg.trainer.get("collective_timeout")))
            return job(cfg)
        except Preempted as stop:
            return after_preemption(stop)
        except SambenchError as exc:
            if cfg.get("traceback") or traceback:
                raise
            fail(exc)
        finally:
            dist.shutdown()

    if "HYDRA_FULL_ERROR" not in os.environ and traceback:
        os.environ["HYDRA_FULL_ERROR"] = "1"
    _main()
