"""Hooks own their behaviour and state: extra hooks by code or config, the EMA hook's state
through a checkpoint, evaluation with the EMA weights, the checkpoint file's layout; and the
process group is set up once, from the composed config."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.distributed
from hydra import compose, initialize_config_dir
from test_engine import ema_hook, make_trainer

import sambench.cli.launch as launch
import sambench.engine.hooks as hooks_module
from sambench import CONFIG_DIR
from sambench.cli.build import check_config, plain
from sambench import dist
from sambench.checkpoint import LAST, load_checkpoint
from sambench.engine.preemption import PreemptionHook
from sambench.engine.hooks import CheckpointHook, Hook
from sambench.errors import ConfigError

CHECKPOINT_KEYS = ["step", "trainable", "optimizer", "scheduler", "scaler", "ema", "rng", "meta"]


class RecordingHook(Hook):
    """Records the calls it receives; keeps a counter as checkpointed state."""

    state_key = "recording"

    def __init__(self, label: str = "recording"):
        self.label, self.calls, self.counter = label, [], 0

    def before_run(self, trainer) -> None:
        self.calls.append(("before_run", trainer.step))

    def after_step(self, trainer, losses) -> None:
        self.calls.append(("after_step", trainer.step))
        self.counter += 1
        assert losses and all(isinstance(v, float) for v in losses.values())  # the step's losses arrive

    def after_run(self, trainer) -> None:
        self.calls.append(("after_run", trainer.step))

    def state_dict(self) -> dict:
        return {"counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.counter = state["counter"]


def composed(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def recording(trainer) -> RecordingHook:
    return next(h for h in trainer.hooks if isinstance(h, RecordingHook))


def test_a_hook_added_by_code_is_called_and_its_state_is_checkpointed(tmp_path):
    trainer = make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=2, hooks=[RecordingHook()])
    # extra hooks come before the preemption hook (it must see a step's last word) and the checkpoint hook
    assert [type(h) for h in trainer.hooks[-3:]] == [RecordingHook, PreemptionHook, CheckpointHook]
    trainer.fit()
    assert recording(trainer).calls == [("before_run", 0), ("after_step", 1), ("after_step", 2), ("after_run", 2)]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / LAST)
    assert list(state) == [*CHECKPOINT_KEYS, "recording"] and state["recording"] == {"counter": 2}
    resumed = make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=3, hooks=[RecordingHook()])
    resumed.fit()
    assert recording(resumed).counter == 3  # 2 restored + 1 new step
    assert recording(resumed).calls == [("before_run", 2), ("after_step", 3), ("after_run", 3)]  # resumed first


def test_a_method_contributes_its_own_hooks(tmp_path):
    """``SambenchMethod.training_hooks()``: the method's hooks run before the config's extra hooks
    and the checkpoint hook, and their state is checkpointed like any other hook's."""
    trainer = make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=2)
    assert not any(isinstance(h, RecordingHook) for h in trainer.hooks)  # the default: none
    method, own = trainer.method, RecordingHook("method")
    own.state_key = "method_recording"
    method.training_hooks = lambda: [own]
    trainer = make_trainer(tmp_path / "run2", tmp_path / "cache", max_steps=2, method=method,
                           hooks=[RecordingHook("config")])
    labels = [h.label for h in trainer.hooks if isinstance(h, RecordingHook)]
    assert labels == ["method", "config"] and isinstance(trainer.hooks[-1], CheckpointHook)
    trainer.fit()
    assert own.calls == [("before_run", 0), ("after_step", 1), ("after_step", 2), ("after_run", 2)]
    state = load_checkpoint(tmp_path / "run2" / "checkpoints" / LAST)
    assert state["method_recording"] == {"counter": 2} and state["recording"] == {"counter": 2}


def test_a_hook_added_by_config_is_built_and_called(tmp_path):
    cfg = composed("trainer.hooks=[{_target_:test_hooks.RecordingHook,label:from_config}]")
    check_config(cfg)
    trainer = make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=1, hooks=plain(cfg.trainer)["hooks"])
    trainer.fit()
    assert recording(trainer).label == "from_config"
    assert [c[0] for c in recording(trainer).calls] == ["before_run", "after_step", "after_run"]


def test_hooks_that_are_not_hooks_or_take_reserved_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="is not a sambench.engine.hooks.Hook"):
        make_trainer(tmp_path / "a", tmp_path / "cache", hooks=[{"_target_": "collections.OrderedDict"}])
    with pytest.raises(ConfigError, match="trainer.hooks: cannot build .*no_such_module"):
        make_trainer(tmp_path / "a", tmp_path / "cache", hooks=[{"_target_": "no_such_module.Hook"}])

    class Clash(Hook):
        state_key = "optimizer"

    with pytest.raises(ConfigError, match=r"checkpoint keys \['optimizer'\]"):
        make_trainer(tmp_path / "b", tmp_path / "cache", max_steps=1, hooks=[Clash()]).fit()


def test_checkpoint_layout_is_unchanged_without_ema(tmp_path):
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=1)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoints" / LAST, weights_only=True)
    assert list(state) == CHECKPOINT_KEYS and state["ema"] is None
    assert state["meta"] == {"method": type(trainer.method).__name__, "world_size": 1}


def test_ema_hook_state_round_trips_through_a_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=2, ema={"decay": 0.5, "warmup": True})
    trainer.fit()
    saved = load_checkpoint(tmp_path / "checkpoints" / LAST)["ema"]
    assert list(load_checkpoint(tmp_path / "checkpoints" / LAST)) == CHECKPOINT_KEYS
    assert saved["num_updates"] == 2 and saved["decay"] == 0.5
    restored = make_trainer(tmp_path, tmp_path / "cache", max_steps=2, ema={"decay": 0.5, "warmup": True})
    fresh = ema_hook(restored).ema
    name = next(iter(saved["shadow"]))
    assert fresh.num_updates == 0 and not torch.equal(fresh.shadow[name], saved["shadow"][name])
    restored.fit()  # resumes at step 2 = max_steps: no step, the hook's state comes from the file
    assert fresh.num_updates == 2
    assert all(torch.equal(fresh.shadow[n], saved["shadow"][n]) for n in saved["shadow"])


def test_evaluation_uses_the_ema_weights_and_restores_the_raw_ones(tmp_path, monkeypatch):
    seen = {}

    def fake_evaluate(method, loader, evaluator, **kwargs):
        seen.update({n: p.detach().clone() for n, p in method.trainable_parameters().items()})
        return {"mIoU": 0.5}, []

    monkeypatch.setattr(hooks_module, "evaluate", fake_evaluate)
    trainer = make_trainer(tmp_path, tmp_path / "cache", max_steps=2, ema={"decay": 0.5}, eval={"at_end": True})
    metrics = trainer.fit()
    assert metrics == {"mIoU": 0.5, "step": 2}
    shadow = ema_hook(trainer).ema.shadow
    assert seen.keys() == shadow.keys() and all(torch.equal(seen[n], shadow[n]) for n in seen)
    assert any(not torch.equal(p, shadow[n]) for n, p in trainer.params.items())  # raw weights are back


# ----- distributed set-up: once, from the composed config ---------------------------------------
@pytest.fixture()
def fake_torchrun(monkeypatch, tmp_path):
    """A GPU host under torchrun with a config folder that has a CPU-only experiment; records the
    process group that would be created (no NCCL is touched)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    (conf / "experiment" / "cpu_only.yaml").write_text("# @package _global_\ntrainer:\n  device: cpu\n")
    monkeypatch.setattr(launch, "CONFIG_DIR", conf)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    calls = {"groups": [], "set_device": []}
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: calls["groups"].append(kw["backend"]))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(d))
    return calls


def test_an_experiment_that_sets_the_cpu_gets_a_gloo_group_on_a_gpu_host(fake_torchrun):
    launch.prepare("train", ["experiment=cpu_only"])
    assert fake_torchrun == {"groups": ["gloo"], "set_device": []}
    assert dist.backend_and_device("cpu") == ("gloo", torch.device("cpu"))
    assert dist.training_device("cpu") == torch.device("cpu")


def test_the_default_device_gets_an_nccl_group_on_a_gpu_host(fake_torchrun):
    launch.prepare("train", [])
    assert fake_torchrun == {"groups": ["nccl"], "set_device": [torch.device("cuda", 0)]}


def test_flags_under_torchrun_are_refused(fake_torchrun):
    with pytest.raises(ConfigError, match=r"flags \(--cfg\) cannot be used under torchrun"):
        launch.prepare("train", ["--cfg", "job"])
    assert fake_torchrun["groups"] == []


def test_a_job_device_that_disagrees_with_the_group_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="trainer.device=cpu needs a gloo process group but this one uses nccl"):
        dist.training_device("cpu")
