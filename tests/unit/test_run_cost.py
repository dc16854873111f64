"""The cost of a run: a tiny training run (tools/train.py's job, in-process) logs parameter counts
once and step time / samples/s / peak memory per window to log.jsonl, writes cost.json beside an
unchanged metrics.json, an evaluation run writes parameters and peak memory, the leaderboard shows
the cost columns; and ``trainer.activation_checkpointing=true`` trains (DIT, the encoder trains)."""

from __future__ import annotations

import json

import pytest
import torch

from sambench.cli import summarize
from sambench.engine.cost import COST_KEYS, parameter_counts, peak_memory_mib
from sambench.registry import METHODS, load_plugins
from sambench.testing import TINY_SAM, run_job
from sambench.backbones.sam import SamBackbone

TINY = ["dataset.num_images=3", "trainer.max_steps=3", "trainer.device=cpu", "logger.log_every=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cost") / "run"
    result = run_job("train", *TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def expected_params():
    """The embedded default's method (sam_prompted, finetune=decoder, tiny SAM), built alike."""
    load_plugins()
    method = METHODS.get("sam_prompted")(sam=SamBackbone(**TINY_SAM))
    return (sum(p.numel() for p in method.trainable_parameters().values()),
            sum(p.numel() for p in method.parameters()))


@pytest.mark.slow
def test_log_has_parameter_counts_once_and_cost_per_window(run):
    lines = records(run)
    counts = [r for r in lines if "train/params_trainable" in r]
    assert len(counts) == 1 and counts[0]["step"] == 0
    trainable, total = expected_params()
    assert counts[0]["train/params_trainable"] == trainable and counts[0]["train/params_total"] == total
    assert 0 < trainable < total
    windows = [r for r in lines if "train/step_time_s" in r]
    assert [r["step"] for r in windows] == [2, 3]  # every 2 steps and the last
    for r in windows:
        assert r["train/step_time_s"] > 0 and r["train/peak_mem_mib"] > 0
        # samples/s and step time describe the same steps: 2 samples per step (trainer.batch_size=2)
        assert r["train/samples_per_s"] == pytest.approx(2 / r["train/step_time_s"], rel=1e-6)


@pytest.mark.slow
def test_cost_json_beside_an_unchanged_metrics_json(run):
    cost = json.loads((run / "cost.json").read_text())
    assert list(cost) == list(COST_KEYS)
    trainable, total = expected_params()
    assert cost["params_trainable"] == trainable and cost["params_total"] == total
    assert cost["step_time_s"] > 0 and cost["peak_mem_mib"] > 100  # a CPU run's peak RSS: torch alone is more
    assert cost["samples_per_s"] == pytest.approx(2 / cost["step_time_s"], rel=1e-6)
    windows = [r for r in records(run) if "train/step_time_s" in r]
    mean = (windows[0]["train/step_time_s"] * 2 + windows[1]["train/step_time_s"]) / 3
    assert cost["step_time_s"] == pytest.approx(mean, rel=1e-6)  # the run's mean over its 3 steps
    metrics = json.loads((run / "metrics.json").read_text())
    assert not set(COST_KEYS) & set(metrics)  # the scores stay comparable across runs


@pytest.mark.slow
def test_evaluation_writes_parameters_and_peak_memory(run, tmp_path):
    result = run_job("eval", "dataset.num_images=3", "trainer.device=cpu", f"ckpt={run}",
                     f"hydra.run.dir={tmp_path / 'eval'}")
    assert result.returncode == 0, result.stderr[-3000:]
    cost = json.loads((tmp_path / "eval" / "cost.json").read_text())
    trainable, total = expected_params()
    assert cost["params_trainable"] == trainable and cost["params_total"] == total and cost["peak_mem_mib"] > 0
    assert "step_time_s" not in cost


@pytest.mark.slow
def test_leaderboard_shows_the_cost_columns(run, tmp_path, capsys):
    assert summarize.main([str(run), "--csv", str(tmp_path / "s.csv")]) == 0
    table = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[-4:] == ["params_trainable", "peak_mem_mib", "samples_per_s", "step_time_s"]
    assert header.index("mIoU") < header.index("params_trainable")  # scores first
    row = dict(zip(header, (c.strip() for c in table[2].strip("|").split("|"))))
    trainable, _ = expected_params()
    assert row["params_trainable"] == summarize.format_count([trainable]) and row["params_trainable"].endswith("M")
    cost = json.loads((run / "cost.json").read_text())
    assert row["step_time_s"] == f"{cost['step_time_s']:.3f}"
    csv_header = (tmp_path / "s.csv").read_text().splitlines()[0].split(",")
    assert {f"{key}_mean" for key in COST_KEYS} <= set(csv_header)


def test_summarize_cost_columns_over_seeds(tmp_path, capsys):
    for seed, (step_time, mem) in enumerate([(0.5, 1000.0), (0.7, 1200.0)]):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        (folder / "config.yaml").write_text(
            f"method: {{name: m}}\ndataset: {{name: d}}\nbackbone: {{name: b}}\ntrainer: {{seed: {seed}}}\n")
        (folder / "metrics.json").write_text(json.dumps({"mIoU": 50.0 + seed}))
        (folder / "cost.json").write_text(json.dumps({"params_trainable": 4_058_340, "params_total": 93_735_472,
                                                      "peak_mem_mib": mem, "samples_per_s": 2 / step_time,
                                                      "step_time_s": step_time}))
    plain = tmp_path / "nocost"
    plain.mkdir()
    (plain / "config.yaml").write_text("method: {name: z}\ndataset: {name: d}\nbackbone: {name: b}\n")
    (plain / "metrics.json").write_text(json.dumps({"mIoU": 10.0}))
    assert summarize.main([str(tmp_path), "--csv", str(tmp_path / "s.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| method | dataset | backbone | n | mIoU | params_trainable | peak_mem_mib | samples_per_s "
                        "| step_time_s |")
    assert lines[2] == "| m | d | b | 2 | 50.50 ± 0.71 | 4.1M | 1100 ± 141 | 3.43 ± 0.81 | 0.600 ± 0.141 |"
    assert lines[3] == "| z | d | b | 1 | 10.00 | - | - | - | - |"


def test_summarize_without_any_cost_json_keeps_its_columns(tmp_path, capsys):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.yaml").write_text("method: {name: m}\ndataset: {name: d}\nbackbone: {name: b}\n")
    (folder / "metrics.json").write_text(json.dumps({"mIoU": 1.0}))
    assert summarize.main([str(folder), "--csv", str(tmp_path / "s.csv")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| method | dataset | backbone | n | mIoU |"
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "method,dataset,backbone,n,mIoU_mean,mIoU_std"


def test_leaderboard_and_engine_agree_on_the_cost_keys():
    assert summarize.COST_KEYS == tuple(COST_KEYS)
    assert set(summarize.COST_COLUMNS) <= set(COST_KEYS)


def test_parameter_counts_and_peak_memory():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    module[0].requires_grad_(False)
    assert parameter_counts(module) == {"params_trainable": 10, "params_total": 26}
    assert peak_memory_mib("cpu") > 0


@pytest.mark.slow
def test_activation_checkpointing_trains_from_the_config(tmp_path):
    """DIT trains its ViT: the run with ``trainer.activation_checkpointing=true`` logs the switch and
    ends with the weights of the run without it."""
    from sambench.testing.refcoco_synthetic import write_synthetic_refcoco

    root = write_synthetic_refcoco(tmp_path / "refer", num_images=4)
    common = ["method=dit_layerwise", f"dataset.root={root}", "trainer.max_steps=2", "trainer.device=cpu",
              "trainer.batch_size=2", "trainer.eval.batch_size=4", "trainer.eval.at_end=false"]
    on = run_job("train", *common, "trainer.activation_checkpointing=true", f"hydra.run.dir={tmp_path / 'on'}")
    assert on.returncode == 0, on.stderr[-3000:]
    assert "activation checkpointing of the image encoder blocks of sam_tiny" in on.stderr
    off = run_job("train", *common, f"hydra.run.dir={tmp_path / 'off'}")
    assert off.returncode == 0, off.stderr[-3000:]
    a = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    b = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert a.keys() == b.keys() and any(k.startswith("sam.sam.image_encoder.") for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.slow
def test_frozen_encoder_run_says_the_switch_has_no_effect(tmp_path):
    result = run_job("train", "dataset.num_images=2", "trainer.max_steps=1", "trainer.device=cpu",
                     "trainer.eval.at_end=false", "trainer.activation_checkpointing=true",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainer.activation_checkpointing=true has no effect" in result.stderr
