"""Faults and bad config values: typed config checks, a missing GPU, full disks, stale
temporaries of a killed run, a log that cannot be appended to."""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from hydra import compose, initialize_config_dir

from sambench import CONFIG_DIR
from sambench.cli.build import check_config
from sambench.cli.jobs import publish_predictions
from sambench.cli.launch import compose_checked
from sambench import dist
from sambench.checkpoint import LAST, load_checkpoint
from sambench.engine.hooks import CheckpointHook
from sambench.errors import ConfigError, OutputError
from sambench.files import remove_stale_temporaries, write_json_atomic
from sambench.logging.jsonl import JsonlWriter
from test_engine import make_trainer


def composed(*overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_steps=abc", "trainer.max_steps='abc': expected an integer or null"),
    ("trainer.batch_size=0", "trainer.batch_size=0: expected an integer >= 1"),
    ("trainer.optim.lr=fast", "trainer.optim.lr='fast': expected a number"),
    ("trainer.optim.lr=-1", "trainer.optim.lr=-1: expected a number > 0"),
    ("trainer.eval.batch_size=abc", "trainer.eval.batch_size='abc': expected an integer"),
    ("trainer.batch_size=null", "trainer.batch_size=None: expected an integer >= 1"),
    ("trainer.optim.betas=[0.9]", "trainer.optim.betas=[0.9]: expected two numbers in [0, 1)"),
    ("trainer.ema.warmup=maybe", "trainer.ema.warmup='maybe': expected true/false"),
    ("trainer.device=gpu", "trainer.device='gpu': expected one of auto, cpu, cuda"),
    ("trainer.collective_timeout=0", "trainer.collective_timeout=0: expected a number of seconds > 0"),
    ("+trainer.max_step=3", "unknown key trainer.max_step; valid:"),
    ("+trainer.optim.beta=0.9", "unknown key trainer.optim.beta; valid: betas, eps, lr, momentum, name, weight_decay"),
    ("trainer.optim.name=adamx", "unknown trainer.optim.name 'adamx'; valid: adamw, adam, sgd"),
    ("trainer.schedule.warmup_epochs=abc", "trainer.schedule.warmup_epochs='abc': expected a number or null"),
    ("+trainer.schedule.total_steps=3", "unknown key trainer.schedule.total_steps"),
    ("trainer.checkpoint.every=0", "trainer.checkpoint.every=0: expected null or an integer >= 1"),
    ("trainer.ema.decay=1.5", "trainer.ema.decay=1.5: expected null or a number in (0, 1)"),
    ("trainer.eval.at_end=sometimes", "trainer.eval.at_end='sometimes': expected true/false"),
    ("trainer.hooks=3", "trainer.hooks=3: expected a list or null"),
    ("save_predictions=yes", "save_predictions='yes': expected true/false"),
    ("dataset.num_images=many", "dataset.num_images='many': expected an integer"),
    ("backbone.encoder_depth=2.5", "backbone.encoder_depth=2.5: expected an integer"),
])
def test_wrong_typed_or_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        check_config(composed(override))
    assert message in str(error.value)


def test_method_values_are_checked_against_the_constructor():
    with pytest.raises(ConfigError, match=r"method.threshold='abc': expected a number"):
        check_config(composed("method=dit_layerwise", "method.threshold=abc"))
    check_config(composed("method=dit_layerwise", "method.threshold=0.5", "trainer.optim.lr=1"))  # int for a float is fine


@pytest.mark.parametrize(("argv", "message"), [
    (["foo=bar"], "Could not override 'foo'"),
    (["trainer.optim.lr=[1"], "no viable alternative"),
    (["method.threshold=abc"], "Could not override 'method.threshold'"),
    (["dataset.num_images=${oc.env:SAMBENCH_TEST_UNSET_VARIABLE}"], "Environment variable 'SAMBENCH_TEST_UNSET_VARIABLE' not found"),
])
def test_hydra_override_errors_become_config_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        compose_checked("train", argv)


def test_overrides_give_the_process_group_settings():
    cfg = compose_checked("train", ["trainer.device=cpu", "trainer.collective_timeout=30"])
    assert {key: cfg.trainer.get(key) for key in ("device", "collective_timeout")} == {
        "device": "cpu", "collective_timeout": 30}


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="trainer.device=cuda but CUDA is not available"):
        dist.init_distributed("cuda")
    assert dist.init_distributed("auto") == torch.device("cpu")


def full_disk_on_call(n: int):
    """A torch.save whose n-th checkpoint write fails like a full disk (cache writes pass)."""
    real, calls = torch.save, {"n": 0}

    def save(obj, file, *args, **kwargs):
        calls["n"] += ".last.pt." in str(file)
        if calls["n"] >= n and ".last.pt." in str(file):
            with open(file, "wb") as handle:  # a partial temporary, as a real failure leaves
                handle.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        return real(obj, file, *args, **kwargs)

    return save


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_names_the_file_and_keeps_the_previous(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=2, checkpoint={"every": 1})
    monkeypatch.setattr(torch, "save", full_disk_on_call(2))
    with pytest.raises(OutputError) as error:
        trainer.fit()
    path = tmp_path / "run" / "checkpoints" / LAST
    message = str(error.value)
    assert str(path) in message and "needs about" in message and "free on that disk" in message
    assert "previous file is kept" in message
    assert load_checkpoint(path)["step"] == 1  # the good checkpoint of step 1 is intact
    assert [p.name for p in path.parent.iterdir()] == [LAST]  # no temporary left


def test_full_disk_for_metrics_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"mIoU": 1.0})

    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(path), "write_bytes", no_space)
    with pytest.raises(OutputError, match=r"cannot write .*metrics.json: No space left on device \(needs about"):
        write_json_atomic(path, {"mIoU": 2.0})
    assert json.loads(path.read_text()) == {"mIoU": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = folder / f".last.pt.{2**22 + 12345}.{'a' * 32}.tmp"  # above Linux's pid_max default: no such process
    dead.write_bytes(b"x" * 1000)
    alive = folder / f".last.pt.{os.getpid()}.{'b' * 32}.tmp"  # a writer that still runs
    alive.write_bytes(b"y")
    other = folder / "notes.tmp"
    other.write_bytes(b"z")
    assert remove_stale_temporaries(folder, tmp_path / "missing") == 1
    assert sorted(p.name for p in folder.iterdir()) == sorted([alive.name, other.name])


def test_training_start_cleans_stale_checkpoint_temporaries(tmp_path):
    stale = tmp_path / "run" / "checkpoints" / f".last.pt.{2**22 + 7}.{'c' * 32}.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=1).fit()
    assert sorted(p.name for p in stale.parent.iterdir()) == [LAST]


def test_a_log_that_cannot_be_appended_warns_once(tmp_path, caplog):
    writer = JsonlWriter(tmp_path / "log.jsonl")

    class FullFile:
        closed = False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    writer._file = FullFile()
    with caplog.at_level("WARNING"):
        writer.write({"step": 1})
        writer.write({"step": 2})
        writer.close()
    assert writer.failed and sum("cannot append" in r.getMessage() for r in caplog.records) == 1


def test_predictions_are_published_only_whole(tmp_path):
    partial, final = tmp_path / "predictions.incomplete", tmp_path / "predictions"
    (final / "old").mkdir(parents=True)
    (partial / "labels").mkdir(parents=True)
    (partial / "a.png").write_bytes(b"png")
    (partial / "labels" / "a.json").write_text(json.dumps({"a": {"label": 1}}))
    publish_predictions(partial, final)
    assert not partial.exists() and sorted(p.name for p in final.iterdir()) == ["a.png", "labels.json"]


def test_too_little_space_for_checkpoints_is_said_at_the_start(tmp_path, monkeypatch, caplog):
    import shutil
    from collections import namedtuple

    trainer = make_trainer(tmp_path / "run", tmp_path / "cache", max_steps=0)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with caplog.at_level("WARNING", logger="sambench.engine.hooks"):
        next(h for h in trainer.hooks if isinstance(h, CheckpointHook)).check_free_space(trainer)
    assert any("only 0.0 MB free" in r.getMessage() and "each checkpoint needs about" in r.getMessage() for r in caplog.records)
