"""Run logging: console setup, JSONL records, rank-0-only writes, wandb offline and its failures."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from sambench.errors import ConfigError
from sambench.logging import RunLogger, build_run_logger
from sambench.logging.console import progress, setup_console_logging
from sambench.logging.jsonl import JsonlWriter
from sambench.logging.wandb_logger import WandbLogger, has_wandb_api_key
from sambench.vis import instance_id_map, overlay_masks, save_png_atomic


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """No API key, no WANDB_MODE, silent, and wandb's home/config/cache folders inside tmp_path."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    return home


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def make_logger(run_dir, *, rank=0, wandb="disabled"):
    return build_run_logger(
        run_dir=run_dir,
        rank=rank,
        config={"method": {"name": "persam", "lr": 0.1}, "trainer": {"seed": 0}},
        method="persam",
        dataset="perseg",
        backbone="vit_t",
        job_type="train",
        wandb=wandb,
        tags=["test"],
        num_overlays=2,
        log_every=5,
    )


def overlay_items():
    image = np.full((24, 32, 3), 100, dtype=np.uint8)
    pred = np.zeros((24, 32), dtype=np.int64)
    pred[2:10, 3:12] = 1
    pred[12:20, 15:30] = 300  # above 255: must wrap, not fail
    gt = torch.zeros(24, 32, dtype=torch.int32)
    gt[2:11, 3:13] = 1
    return [
        {"image": image, "pred": pred, "gt": gt, "caption": "img 0", "class_labels": None},
        {"image": image, "pred": pred.clip(0, 1), "gt": None, "caption": "img 1",
         "class_labels": {0: "background", 1: "dog"}},
    ]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def offline_run_folders(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_lines_parse_and_convert_values(tmp_path):
    writer = JsonlWriter(tmp_path / "sub" / "log.jsonl")
    writer.write({
        "step": np.int64(3),
        "loss": torch.tensor(0.25),
        "one": torch.tensor([1.5]),
        "np": np.float32(0.5),
        "vec": np.array([1, 2]),
        "flag": np.bool_(True),
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "name": "x",
    })
    writer.write({"step": 4})
    writer.close()
    writer.close()
    first, second = read_jsonl(tmp_path / "sub" / "log.jsonl")
    assert first == {"step": 3, "loss": 0.25, "one": 1.5, "np": 0.5, "vec": [1, 2], "flag": True,
                     "nan": None, "inf": None, "name": "x"}
    assert second == {"step": 4}


def test_run_logger_writes_step_time_and_prefixed_metrics(tmp_path):
    logger = make_logger(tmp_path / "run")
    assert isinstance(logger, RunLogger) and logger.active
    assert (logger.num_overlays, logger.log_every) == (2, 5)
    logger.log_metrics({"loss": torch.tensor(1.25), "lr": 1e-3}, step=10, prefix="train/")
    logger.log_overlays(overlay_items(), step=10)  # wandb disabled: nothing, and no error
    logger.finish()
    logger.finish()
    resumed = make_logger(tmp_path / "run")  # an existing log.jsonl is continued
    resumed.log_metrics({"mIoU": 55.0}, step=20, prefix="val/")
    resumed.finish()

    records = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["step"] for r in records] == [10, 20]
    assert records[0]["train/loss"] == 1.25 and records[0]["train/lr"] == 1e-3
    assert records[1]["val/mIoU"] == 55.0
    assert all(isinstance(r["time"], float) and r["time"] > 1e9 for r in records)
    assert not (tmp_path / "run" / "wandb").exists()


def test_run_logger_on_rank_1_writes_nothing(tmp_path, wandb_env, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "init", lambda **_: pytest.fail("wandb.init on rank 1"))
    logger = make_logger(tmp_path / "run", rank=1, wandb="offline")
    assert not logger.active
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_overlays(overlay_items(), step=1)
    logger.finish()
    assert not (tmp_path / "run").exists()


# --- wandb -----------------------------------------------------------------------------------


def test_wandb_offline_writes_run_files_under_run_dir(tmp_path, wandb_env, caplog):
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    logger = make_logger(run_dir, wandb="offline")
    logger.log_metrics({"loss": np.float32(0.5)}, step=1, prefix="train/")
    logger.log_overlays(overlay_items(), step=1)
    logger.finish()

    assert "wandb failed" not in caplog.text
    (folder,) = offline_run_folders(run_dir)
    assert list(folder.glob("*.wandb"))
    assert list((folder / "files" / "media" / "images").rglob("*.png"))
    assert read_jsonl(run_dir / "log.jsonl")[0]["train/loss"] == 0.5


def test_wandb_online_without_key_falls_back_to_offline(tmp_path, wandb_env, caplog):
    caplog.set_level(logging.INFO)
    logger = WandbLogger(
        run_dir=tmp_path, mode="online", project="sambench", entity=None, group="persam/perseg",
        name="fallback", job_type="eval", tags=["persam"], config={"a": 1},
    )
    assert logger.mode == "offline" and logger.enabled
    assert "no wandb API key" in caplog.text
    logger.log_metrics({"mIoU": 1.0}, step=0)
    logger.finish()
    assert not logger.enabled
    (folder,) = offline_run_folders(tmp_path)
    assert list(folder.glob("*.wandb"))


def test_wandb_run_resumed_in_its_folder_continues_the_same_wandb_run(tmp_path, wandb_env):
    """A requeued or rerun training run (same folder) logs into the wandb run it started."""
    ids = []
    for step in (1, 2):
        logger = WandbLogger(run_dir=tmp_path, mode="offline", project="sambench", entity=None, group="g",
                             name="resumed", job_type="train", tags=[], config={})
        ids.append(logger._run.id)
        logger.log_metrics({"loss": 1.0 / step}, step=step)
        logger.finish()
    assert ids[0] == ids[1] == (tmp_path / "wandb" / "run_id").read_text().strip()
    other = WandbLogger(run_dir=tmp_path / "other", mode="offline", project="sambench", entity=None, group="g",
                        name="other", job_type="train", tags=[], config={})
    assert other._run.id != ids[0]  # another run folder: another wandb run
    other.finish()


def test_wandb_api_key_detection(wandb_env, monkeypatch):
    assert not has_wandb_api_key()
    netrc_file = wandb_env / ".netrc"
    netrc_file.write_text("machine example.org login user password secret\n")
    netrc_file.chmod(0o600)
    assert not has_wandb_api_key()
    netrc_file.write_text("machine api.wandb.ai login user password secret\n")
    assert has_wandb_api_key()
    netrc_file.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_wandb_api_key()


def test_wandb_init_failure_disables_wandb_and_keeps_jsonl(tmp_path, wandb_env, monkeypatch, caplog):
    import wandb

    def broken_init(**_):
        raise RuntimeError("service unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = make_logger(tmp_path / "run", wandb="offline")
    logger.log_metrics({"loss": 2.0}, step=1)
    logger.log_overlays(overlay_items(), step=1)
    logger.finish()
    warnings = [r for r in caplog.records if "wandb failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "service unreachable" in warnings[0].getMessage()
    assert read_jsonl(tmp_path / "run" / "log.jsonl")[0]["loss"] == 2.0


def test_wandb_log_failure_disables_wandb_and_keeps_jsonl(tmp_path, wandb_env, monkeypatch, caplog):
    logger = make_logger(tmp_path / "run", wandb="offline")
    run = logger._wandb._run

    def broken_log(*_, **__):
        raise OSError("disk full")

    monkeypatch.setattr(type(run), "log", broken_log)
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_metrics({"loss": 0.5}, step=2)
    logger.log_overlays(overlay_items(), step=2)
    logger.finish()
    monkeypatch.undo()
    run.finish()  # the test's own clean-up: the disabled logger leaves the run to wandb's atexit

    assert not logger._wandb.enabled
    assert sum("wandb failed" in r.getMessage() for r in caplog.records) == 1
    assert [r["loss"] for r in read_jsonl(tmp_path / "run" / "log.jsonl")] == [1.0, 0.5]


def test_invalid_wandb_mode_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="online"):
        make_logger(tmp_path, wandb="yes")


# --- console ---------------------------------------------------------------------------------


def test_console_logging_formats_and_is_idempotent(tmp_path, capsys, restore_root_logger):
    log_file = tmp_path / "logs" / "train.log"
    setup_console_logging(rank=0, log_file=log_file)
    setup_console_logging(rank=0, log_file=log_file)
    ours = [h for h in restore_root_logger.handlers if getattr(h, "_sambench_console", False)]
    assert len(ours) == 2  # one stderr + one file handler, not four
    logging.getLogger("sambench.test").info("hello")
    logging.getLogger("sambench.test").warning("careful")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("[") and err[0][9:] == "] hello" and len(err[0]) == len("[12:34:56] hello")
    assert err[1].endswith("] WARNING sambench.test: careful")
    file_lines = log_file.read_text().splitlines()
    assert len(file_lines) == 2 and file_lines[0][:4].isdigit() and file_lines[0].endswith("hello")


def test_console_logging_other_ranks_warn_only_with_prefix(capsys, restore_root_logger):
    setup_console_logging(rank=3)
    logging.getLogger("sambench.test").info("hidden")
    logging.getLogger("sambench.test").error("broken")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("[rank 3] [") and "ERROR sambench.test: broken" in err[0]


def test_progress_is_silent_off_rank_0():
    bar = progress(range(3), desc="eval", rank=1)
    assert bar.disable and list(bar) == [0, 1, 2]
    bar = progress(total=5, desc="train", rank=0)
    assert not bar.disable and bar.total == 5 and not bar.leave
    bar.close()


# --- vis (the overlays the logger writes to vis/) ----------------------------------------------


def test_instance_id_map_and_overlay():
    masks = np.zeros((2, 4, 5), dtype=bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    ids = instance_id_map(masks)
    assert ids.dtype == np.int32 and ids.shape == (4, 5)
    assert ids[0, 0] == 1 and ids[1, 0] == 2 and ids[2, 0] == 2 and ids[3, 0] == 0
    assert instance_id_map(np.zeros((0, 4, 5), dtype=bool)).sum() == 0

    image = np.full((4, 5, 3), 200, dtype=np.uint8)
    out = overlay_masks(image, masks, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[3] == image[3]).all()  # background untouched
    assert not (out[0, 0] == out[1, 0]).all()  # distinct colours per instance
    with pytest.raises(ValueError, match="H x W x 3"):
        overlay_masks(image[..., 0], masks)


def test_save_png_atomic_creates_folders_and_leaves_no_temp_file(tmp_path):
    from PIL import Image

    path = tmp_path / "vis" / "deep" / "0001.png"
    array = np.arange(12 * 3, dtype=np.uint8).reshape(2, 6, 3)
    save_png_atomic(path, array)
    save_png_atomic(path, array)  # overwrite is fine
    assert np.array_equal(np.asarray(Image.open(path)), array)
    assert [p.name for p in path.parent.iterdir()] == ["0001.png"]
