"""Cluster placement (ranks from a faked Slurm environment, as submitit's tasks see it) and
preemption: a signal stops the run at a step boundary with a checkpoint, and the rerun resumes
exactly (in-process; the submitit requeue itself is in tests/distributed/test_cluster.py)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from sambench import cluster, dist
from sambench.engine.preemption import DEFAULT_SIGNALS, PreemptionHook, signal_numbers
from sambench.errors import ConfigError
from sambench.testing import run_job

#: what Slurm sets in task 11 of a 2-node, 8-tasks-per-node job step started by submitit's sbatch script
SLURM_TASK_11 = {
    "SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1", "SLURM_PROCID": "11", "SLURM_LOCALID": "3", "SLURM_JOB_NODELIST": "gpu-node[07-08]",
}
TORCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def slurm_task(monkeypatch):
    """The faked task's environment; the whole environment comes back afterwards (exported
    variables included: a stray RANK would make later tests start process groups)."""
    saved = dict(os.environ)
    for key in [*TORCH_VARIABLES, "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_PREEMPT_SIGNAL"]:
        os.environ.pop(key, None)
    os.environ.update(SLURM_TASK_11)
    yield monkeypatch
    os.environ.clear()
    os.environ.update(saved)


def test_no_placement_outside_a_submitit_job(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")  # e.g. plain python inside an salloc shell: not a submitit task
    assert cluster.submitit_placement() is None and cluster.preempt_signal() is None
    assert not cluster.hand_over(signal.SIGUSR2)


def test_placement_from_a_faked_slurm_environment(slurm_task):
    placement = cluster.submitit_placement()
    assert (placement.rank, placement.world_size, placement.local_rank, placement.local_world_size) == (11, 16, 3, 8)
    assert placement.master_addr == "gpu-node07"  # the first host of the expanded node list
    assert placement.job_id == "4242" and placement.executor == "slurm"
    assert 20000 <= placement.master_port <= 60000
    slurm_task.setenv("SLURM_PROCID", "0")
    slurm_task.setenv("SLURM_LOCALID", "0")
    slurm_task.setenv("SLURM_NODEID", "0")
    first = cluster.submitit_placement()
    assert first.rank == 0 and first.master_port == placement.master_port  # every task meets at one address
    slurm_task.setenv("MASTER_PORT", "29611")  # the user's choice wins
    assert cluster.submitit_placement().master_port == 29611


def test_array_task_placement_and_export(slurm_task):
    slurm_task.setenv("SLURM_ARRAY_JOB_ID", "900")
    slurm_task.setenv("SLURM_ARRAY_TASK_ID", "2")  # one job of a sweep (submitit submits sweeps as an array)
    placement = cluster.submitit_placement()
    assert placement.job_id == "900_2"
    cluster.export_placement(placement)
    assert {k: os.environ[k] for k in TORCH_VARIABLES} == {
        "MASTER_ADDR": "gpu-node07", "MASTER_PORT": str(placement.master_port), "RANK": "11", "WORLD_SIZE": "16",
        "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}
    assert dist.launched_by_torchrun()  # from here on the process group starts as under torchrun


def test_a_one_task_job_starts_no_process_group(slurm_task):
    slurm_task.setenv("SLURM_NTASKS", "1")
    slurm_task.setenv("SLURM_JOB_NUM_NODES", "1")
    slurm_task.setenv("SLURM_PROCID", "0")
    slurm_task.setenv("SLURM_LOCALID", "0")
    slurm_task.setenv("SLURM_JOB_NODELIST", "gpu-node07")
    assert dist.init_distributed("cpu") == torch.device("cpu")
    assert not dist.is_distributed()
    assert "RANK" not in os.environ


def test_gpu_of_a_task(monkeypatch):
    """cuda:<local rank> when the task sees its node's GPUs, cuda:0 when the scheduler bound one."""
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert dist.cuda_index() == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert dist.cuda_index() == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="local rank 3 but this process sees 2 GPUs"):
        dist.cuda_index()


def test_a_task_with_idle_gpus_says_so(monkeypatch, caplog):
    """Hydra issue 2231's pitfall: gpus_per_node=8 with one task per node uses one GPU."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    dist.warn_unused_gpus(1)
    assert "sees 8 GPUs but the job runs 1 task per node" in caplog.text
    assert "hydra.launcher.tasks_per_node=8" in caplog.text
    caplog.clear()
    dist.warn_unused_gpus(8)
    assert not caplog.text


def test_preempt_signal_follows_submitit(slurm_task):
    assert cluster.preempt_signal() == signal.SIGUSR2  # submitit's default
    assert not cluster.hand_over(signal.SIGTERM)  # Slurm cancels/preempts with TERM itself: never requeued here


def test_signal_names():
    assert signal_numbers(DEFAULT_SIGNALS) == [signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM]
    assert signal_numbers(["sigusr1", "term"]) == [signal.SIGUSR1, signal.SIGTERM]
    for bad in (["KILL"], ["USR3"], ["stop"]):
        with pytest.raises(ConfigError, match="not a signal that can be caught"):
            signal_numbers(bad)
    assert PreemptionHook(signals=[]).signums == []


def test_bad_signal_name_is_a_config_error(tmp_path):
    result = run_job("train", "trainer.preemption.signals=[USR1,HUP2]", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "trainer.preemption.signals: 'HUP2' is not a signal" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before the run folder


def test_chdir_is_refused(tmp_path):
    result = run_job("train", "hydra.job.chdir=true", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "hydra.job.chdir=true is not supported" in result.stderr


COMMON = ("trainer.device=cpu", "dataset.num_images=4", "trainer.max_steps=4", "trainer.batch_size=2")


def _final(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.slow
def test_signal_stops_at_the_step_boundary_and_the_rerun_resumes_exactly(tmp_path):
    """SIGUSR1 during step 2 (as Slurm's pre-timeout signal): the run checkpoints after step 2 and
    exits with 128 + 10, the handlers in place before come back; the same command in the same
    run folder resumes and ends with the weights and metrics of a run that was never stopped."""
    before = signal.getsignal(signal.SIGUSR1)
    hook = "trainer.hooks=[{_target_:sambench.testing.hooks.SignalAtStep,step:2,signal:USR1}]"
    stopped = run_job("train", *COMMON, hook, f"hydra.run.dir={tmp_path / 'a'}")
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-2000:]
    assert "stopped by SIGUSR1 after step 2 (checkpoint saved)" in stopped.stderr
    assert signal.getsignal(signal.SIGUSR1) is before
    assert _final(tmp_path / "a")["step"] == 2 and not (tmp_path / "a" / "metrics.json").exists()

    resumed = run_job("train", *COMMON, f"hydra.run.dir={tmp_path / 'a'}")
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr
    plain = run_job("train", *COMMON, f"hydra.run.dir={tmp_path / 'b'}")
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["trainable"][k], b["trainable"][k]) for k in b["trainable"])
    assert all(torch.equal(a["optimizer"]["state"][k]["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
               for k in b["optimizer"]["state"])
    assert resumed.metrics == plain.metrics


def test_handlers_are_installed_for_the_run_only():
    before = signal.getsignal(signal.SIGUSR1)
    hook = PreemptionHook(signals=["USR1"])
    hook.before_run(trainer=None)
    assert signal.getsignal(signal.SIGUSR1) == hook._note
    hook.after_run(trainer=None)
    assert signal.getsignal(signal.SIGUSR1) is before
    off = PreemptionHook(signals=[])
    off.before_run(trainer=None)
    assert signal.getsignal(signal.SIGUSR1) is before
