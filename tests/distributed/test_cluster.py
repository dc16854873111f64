"""Hydra's submitit launcher with its local executor (the real plugin and executor, as on Slurm
minus sbatch): a 2-job sweep of 2-task jobs, in which job 1 is preempted by a signal sent from
here, requeued by submitit and resumed, ending bit for bit where job 0 (never stopped) ends."""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch

from sambench.testing import REPO, TOOL_TIMEOUT_S, scores

pytestmark = pytest.mark.distributed

COMMON = [
    "-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "trainer.device=cpu",
    "dataset.num_images=4", "trainer.max_steps=4", "trainer.batch_size=1", "trainer.eval.batch_size=2",
]


def _start(cwd, *overrides) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), *COMMON, *overrides], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(paths, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TOOL_TIMEOUT_S
    while not all(p.exists() for p in paths):
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the job ended before {what}: {out[-2000:]} {err[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} after {TOOL_TIMEOUT_S} s"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep over ``trainer.hooks``: job 0 plain, job 1 with a hook that pauses after step 2
    until SIGUSR2 (submitit's pre-timeout signal), sent from here, reaches its rank 1.
    Returns the sweep folder and the submitter's stdout."""
    work = tmp_path_factory.mktemp("submitit")
    marks = work / "marks"
    hook = f"{{_target_:sambench.testing.hooks.WaitForSignalAtStep,step:2,folder:'{marks}'}}"
    process = _start(work, f"trainer.hooks=[],[{hook}]")
    _wait_for([marks / "rank0.pid", marks / "rank1.pid"], process, "both ranks of job 1 reached step 2")
    os.kill(int((marks / "rank1.pid").read_text()), signal.SIGUSR2)  # one rank only: the ranks must agree
    _wait_for([marks / "rank1.signalled"], process, "rank 1 noted the signal")
    (marks / "go").touch()  # rank 0 goes on; both stop after step 2
    out, err = process.communicate(timeout=TOOL_TIMEOUT_S)
    assert process.returncode == 0, f"{out[-2000:]} {err[-3000:]}"
    (folder,) = (work / "multirun" / "train").iterdir()  # one sweep folder: one stamp for every task
    return folder, out


def _runs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _trainable(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["trainable"]


def test_sweep_runs_one_folder_per_job_shared_by_its_tasks(sweep):
    sweep_dir, out = sweep
    assert [p.name for p in _runs(sweep_dir)] == ["0", "1"]
    for run, hooks in zip(_runs(sweep_dir), ("hooks: []", "WaitForSignalAtStep")):
        assert json.loads((run / "env.json").read_text())["world_size"] == 2  # both tasks in one process group
        assert hooks in (run / "config.yaml").read_text()
        assert json.loads((run / "metrics.json").read_text())["step"] == 4
        assert "run folder: " + str(run) in (run / "train.log").read_text()
    jobs = sorted((sweep_dir / ".submitit").glob("[0-9]*"))
    assert len(jobs) == 2 and all(len(list(job.glob("*_log.err"))) == 2 for job in jobs)  # 2 jobs x 2 tasks
    assert f"sweep folder: {sweep_dir}" in out


def test_sweep_ends_with_its_leaderboard(sweep):
    """mean ± std of the sweep's runs of one (method, dataset, backbone); over seeds in a seed
    sweep, here over the two jobs (equal: see the next test)."""
    sweep_dir, out = sweep
    values = [json.loads((run / "metrics.json").read_text())["mIoU"] for run in _runs(sweep_dir)]
    (row,) = csv.DictReader((sweep_dir / "summary.csv").open())
    assert (row["method"], row["dataset"], row["backbone"], row["n"]) == ("sam_prompted", "sample", "sam_tiny", "2")
    assert float(row["mIoU_mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
    assert float(row["mIoU_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    table = (sweep_dir / "summary.md").read_text()
    assert "| sam_prompted | sample | sam_tiny | 2 |" in table and table.strip() in out


def test_preempted_job_is_requeued_and_resumes_exactly(sweep):
    """Job 1's rank 1 got SIGUSR2; both ranks stopped after step 2, rank 0 saved last.pt and
    handed over to submitit, which re-pickled the launcher call and restarted both tasks; they
    resumed in the same run folder and end bit for bit where job 0, never stopped, ends."""
    sweep_dir, _ = sweep
    plain, run = _runs(sweep_dir)
    logs = {job: "".join(p.read_text() for p in job.glob("*_log.*")) for job in (sweep_dir / ".submitit").glob("[0-9]*")}
    requeued = [job for job, text in logs.items() if "Requeued job" in text]
    assert len(requeued) == 1 and "Not checkpointing nor requeuing since I am a slave" in logs[requeued[0]]
    log = (run / "train.log").read_text()
    assert "stopped by SIGUSR2 after step 2 (checkpoint saved)" in log
    assert "resumed from" in log and "at step 2" in log
    assert "stopped by" not in (plain / "train.log").read_text()
    reference, resumed = _trainable(plain), _trainable(run)
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert scores(run) == scores(plain)
