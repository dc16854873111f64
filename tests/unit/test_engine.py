"""Engine: resume exactness, atomic checkpoints, accumulation, schedules, EMA."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench.checkpoint import LAST, load_checkpoint, save_atomic
from sambench.cli.build_training import build_trainer
from sambench.engine.ema import ParameterEMA
from sambench.engine.hooks import EMAHook
from sambench.engine.loop import Trainer
from sambench.engine.schedules import epochs_to_steps, lr_multiplier
from sambench.errors import CheckpointError, ConfigError
from sambench.evaluation.instance_iou import InstanceIoUEvaluator
from sambench.logging import RunLogger
from sambench.registry import DATASETS, METHODS, load_plugins

load_plugins()


def make_trainer(run_dir: Path, cache: Path, **overrides) -> Trainer:
    """A trainer as tools/train.py builds it (``overrides``: trainer config keys, grouped)."""
    torch.manual_seed(0)
    sam = SamBackbone(**TINY_SAM, cache_dir=str(cache))
    method = METHODS.get("sam_prompted")(sam=sam)
    sample = DATASETS.get("sample")
    kwargs = dict(
        method=method, train_set=sample(split="train", num_images=6), eval_set=sample(split="eval", num_images=3),
        evaluator=InstanceIoUEvaluator(), run_dir=run_dir, device=torch.device("cpu"),
        run_logger=RunLogger(), max_steps=4, batch_size=2, optim={"lr": 1e-3}, eval={"at_end": False},
    )
    kwargs.update(overrides)
    return build_trainer(**kwargs)


def ema_hook(trainer: Trainer) -> EMAHook:
    return next(h for h in trainer.hooks if isinstance(h, EMAHook))


def trained_params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.params.items()}


@pytest.mark.slow
def test_resume_gives_identical_parameters(tmp_path):
    """N steps straight == k steps, stop, resume to N (crossing an epoch boundary)."""
    straight = make_trainer(tmp_path / "a", tmp_path / "cache", max_steps=5)
    straight.fit()
    first = make_trainer(tmp_path / "b", tmp_path / "cache", max_steps=2)
    first.fit()
    assert (tmp_path / "b" / "checkpoints" / LAST).is_file()
    resumed = make_trainer(tmp_path / "b", tmp_path / "cache", max_steps=5)
    resumed.fit()
    assert resumed.step == 5
    a, b = trained_params(straight), trained_params(resumed)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[n], b[n]) for n in a)
    rng_a, rng_b = (load_checkpoint(tmp_path / run / "checkpoints" / LAST)["rng"] for run in ("a", "b"))
    assert torch.equal(rng_a["torch"], rng_b["torch"])  # starting an epoch's iterator draws no global RNG
    moved = make_trainer(tmp_path / "c", tmp_path / "cache", max_steps=0)
    assert any(not torch.equal(a[n], p) for n, p in moved.params.items())


def test_checkpoint_is_plain_and_loads_weights_only(tmp_path):
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=1, ema={"decay": 0.9})
    trainer.fit()
    state = torch.load(tmp_path / "checkpoints" / LAST, weights_only=True)
    assert state["step"] == 1
    assert set(state["trainable"]) == set(trainer.params)
    assert not any(k.startswith("sam.sam.image_encoder") for k in state["trainable"])
    assert set(state) >= {"optimizer", "scheduler", "rng", "ema", "scaler"}


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / LAST
    save_atomic({"trainable": {"w": torch.ones(2)}}, path)

    def crash(obj, file, *args, **kwargs):
        Path(file).write_bytes(b"partial")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"trainable": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["trainable"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == [LAST]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint"])
def test_bad_checkpoint_files_are_clear_errors(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(bad)):
        load_checkpoint(bad)


@pytest.mark.slow
def test_gradient_accumulation_matches_larger_batch(tmp_path):
    """2 micro-batches of 1 == 1 batch of 2 (losses are means over samples)."""
    big = make_trainer(tmp_path / "a", tmp_path / "cache", max_steps=2, batch_size=2)
    big.fit()
    small = make_trainer(tmp_path / "b", tmp_path / "cache", max_steps=2, batch_size=1, accumulate=2)
    small.fit()
    a, b = trained_params(big), trained_params(small)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


@pytest.mark.slow
def test_ema_is_used_for_evaluation_and_restored(tmp_path):
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=2, ema={"decay": 0.5})
    trainer.fit()
    raw = trained_params(trainer)
    name = next(iter(raw))
    with ema_hook(trainer).swapped_in():
        assert torch.equal(trainer.params[name], ema_hook(trainer).ema.shadow[name])
        assert not torch.equal(trainer.params[name], raw[name])
    assert torch.equal(trainer.params[name], raw[name])


def test_ema_update_formula():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    ema = ParameterEMA({"p": p}, decay=0.9)
    with torch.no_grad():
        p.fill_(3.0)
    ema.update()
    assert ema.shadow["p"].item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def test_ema_warmup_follows_the_weights_early_and_resumes():
    p = torch.nn.Parameter(torch.tensor([0.0]))
    ema = ParameterEMA({"p": p}, decay=0.9997, warmup=True)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 4.0]):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
        d = min(0.9997, (n + 1) / (n + 10))
        expected = d * expected + (1 - d) * value
        assert ema.shadow["p"].item() == pytest.approx(expected)
    restored = ParameterEMA({"p": p}, decay=0.9997, warmup=True)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 3 and restored.current_decay() == pytest.approx(4 / 13)


def test_epoch_based_schedule_keys_become_steps():
    sched = epochs_to_steps({"name": "step", "warmup_epochs": 3, "milestone_epochs": [30, 35], "milestones": [7]}, 10)
    assert sched == {"name": "step", "warmup_steps": 30, "milestones": [7, 300, 350]}
    assert epochs_to_steps({"warmup_steps": 5, "warmup_epochs": None}, 10) == {"warmup_steps": 5}


def test_schedules():
    assert lr_multiplier(0, total_steps=10, name="constant", warmup_steps=4, warmup_start=0.0) == 0.0
    assert lr_multiplier(2, total_steps=10, name="constant", warmup_steps=4, warmup_start=0.0) == 0.5
    assert lr_multiplier(4, total_steps=14, name="cosine", warmup_steps=4) == pytest.approx(1.0)
    assert lr_multiplier(9, total_steps=14, name="cosine", warmup_steps=4) == pytest.approx(0.5)
    assert lr_multiplier(14, total_steps=14, name="cosine", warmup_steps=4, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_multiplier(5, total_steps=10, name="poly", power=1.0) == pytest.approx(0.5)
    assert lr_multiplier(7, total_steps=10, name="step", milestones=(3, 6), gamma=0.5) == 0.25
    assert math.isclose(lr_multiplier(3, total_steps=10, name="poly", power=0.9), 0.7**0.9)
    with pytest.raises(ConfigError, match="cosine"):
        lr_multiplier(0, total_steps=1, name="cosnie")


def test_max_epochs_sets_steps(tmp_path):
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=None, max_epochs=2, batch_size=2)
    assert trainer.steps_per_epoch == 3 and trainer.max_steps == 6


def test_bf16_autocast_step_runs(tmp_path):
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=1, precision="bf16", grad_clip=1.0)
    before = trained_params(trainer)
    trainer.fit()
    after = trained_params(trainer)
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_unknown_precision_and_optimizer(tmp_path):
    with pytest.raises(ConfigError, match="fp32"):
        make_trainer(tmp_path, tmp_path / "cache", precision="fp8")
    with pytest.raises(ConfigError, match="adamw"):
        make_trainer(tmp_path, tmp_path / "cache", optim={"name": "adamx"})
