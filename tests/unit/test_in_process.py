"""sambench.testing.run_job: the train/eval jobs in the test process give what the tools give, and
leave the process as they found it."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from sambench import CONFIG_DIR
from sambench.cli import launch
from sambench.data import base as data_base
from sambench.testing import run_job, run_tool, scores
from sambench.testing.in_process import process_state_restored, rng_states, torch_flags

EMBEDDED = ["dataset.num_images=3", "trainer.max_steps=2", "trainer.device=cpu"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_training_in_process_writes_what_the_tool_writes(tmp_path):
    tool, job = tmp_path / "tool", tmp_path / "job"
    result = run_tool("tools/train.py", *EMBEDDED, f"hydra.run.dir={tool}")
    assert result.returncode == 0, result.stderr[-3000:]
    in_process = run_job("train", *EMBEDDED, f"hydra.run.dir={job}")
    assert in_process.returncode == 0, in_process.stderr[-3000:]
    assert in_process.run_dir == job and in_process.metrics == scores(job)
    assert scores(job) == scores(tool)
    assert (job / "config.yaml").read_text() == (tool / "config.yaml").read_text()
    assert {p.name for p in job.iterdir()} == {p.name for p in tool.iterdir()}
    assert "metrics: " in (job / "train.log").read_text()
    expected = torch.load(tool / "checkpoints" / "last.pt", weights_only=True)
    state = torch.load(job / "checkpoints" / "last.pt", weights_only=True)
    assert set(state) == set(expected) and state["step"] == expected["step"] == 2
    assert set(state["trainable"]) == set(expected["trainable"]) and state["trainable"]
    for name, tensor in expected["trainable"].items():
        assert torch.equal(state["trainable"][name], tensor), name


@pytest.mark.slow
@pytest.mark.parametrize("job, overrides", [
    ("train", ["method=sam_promptd"]),  # refused by launch.prepare (before the run folder)
    ("eval", ["trainer.device=cpu", "ckpt={tmp}/nope.pt"]),  # refused by the job
])
def test_a_user_error_is_status_2_with_the_tools_error_line(tmp_path, job, overrides):
    overrides = [arg.format(tmp=tmp_path) for arg in overrides] + [f"hydra.run.dir={tmp_path / 'run'}"]
    tool = run_tool(f"tools/{job}.py", *overrides, cwd=tmp_path)
    in_process = run_job(job, *overrides)
    assert tool.returncode == in_process.returncode == 2
    assert len(error_lines(in_process.stderr)) == 1 and error_lines(in_process.stderr) == error_lines(tool.stderr)
    assert "Traceback" not in in_process.stderr and in_process.metrics is None


def test_traceback_true_raises_the_user_error(tmp_path):
    from sambench.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method 'sam_promptd'"):
        run_job("train", "method=sam_promptd", "traceback=true")


def test_flags_and_unknown_jobs_are_refused():
    with pytest.raises(ValueError, match="use run_tool"):
        run_job("train", "--cfg", "job")
    with pytest.raises(ValueError, match="train, eval"):
        run_job("bench")


def test_an_initialised_global_hydra_of_the_caller_survives(tmp_path):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert run_job("train", "method=sam_promptd").returncode == 2
        assert GlobalHydra.instance().hydra is hydra
    assert not GlobalHydra.instance().is_initialized()


def process_snapshot() -> dict:
    root = logging.getLogger()
    return {
        "handlers": list(root.handlers), "level": root.level, "hydra": GlobalHydra.instance().hydra,
        "hydra_config": HydraConfig.instance().cfg, "stamp": launch._stamp["value"], "flags": torch_flags(),
        "pixels": data_base.max_image_pixels(), "environ": dict(os.environ), "cwd": os.getcwd(),
    }


@pytest.mark.slow
def test_two_runs_in_a_row_give_the_same_metrics_and_leave_no_state_behind(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    before, draws = process_snapshot(), (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    args = ["dataset.num_images=2", "trainer.device=cpu", "max_image_pixels=300000000"]
    first = run_job("eval", *args, f"hydra.run.dir={tmp_path / 'first'}")
    second = run_job("eval", *args, f"hydra.run.dir={tmp_path / 'second'}")
    assert first.returncode == second.returncode == 0, second.stderr[-3000:]
    assert first.metrics == second.metrics and first.metrics["num_images"] == 2
    assert process_snapshot() == before
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws  # the seeds' draws, untouched by the jobs
    logging.getLogger().error("after the runs")  # no handler writes to a run's eval.log any more
    for run in ("first", "second"):
        text = (tmp_path / run / "eval.log").read_text()
        assert "metrics: " in text and "after the runs" not in text
    assert "run folder: " in first.stderr and "run folder: " in second.stderr


def test_process_state_restored_puts_every_setting_back(monkeypatch):
    monkeypatch.setenv("SAMBENCH_TEST_KEPT", "1")
    root = logging.getLogger()
    before, rng = process_snapshot(), rng_states()
    added = logging.FileHandler(os.devnull)
    with process_state_restored():
        assert launch._stamp["value"] is None  # a fresh process has no stamp yet
        launch._stamp["value"] = "2000-01-01_00-00-00"
        root.addHandler(added)
        root.setLevel(logging.DEBUG)
        torch.set_default_dtype(torch.float64)
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = not before["flags"]["matmul_tf32"]
        torch.backends.cudnn.allow_tf32 = not before["flags"]["cudnn_tf32"]
        torch.set_grad_enabled(False)
        data_base.set_max_image_pixels(5)
        os.environ["SAMBENCH_TEST_ADDED"] = "1"
        os.environ["SAMBENCH_TEST_KEPT"] = "2"
        random.random(), np.random.rand(), torch.rand(3)
    assert process_snapshot() == before
    assert added.stream is None  # closed
    after = rng_states()
    assert after["random"] == rng["random"] and torch.equal(after["torch"], rng["torch"])
    assert all(np.array_equal(a, b) for a, b in zip(after["numpy"], rng["numpy"]))
