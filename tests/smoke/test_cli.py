"""The command-line tools end to end: outputs of a run, eval of a run folder, clear errors.

``tools/train.py`` and ``tools/eval.py`` run as processes where the process is what a test checks
(train then eval end to end, argv and Hydra handling, ``traceback=true``, wandb's own processes);
results and user errors raised by the jobs are checked on in-process runs (``run_job``: the same
checks, job and ``error:`` line, without a new interpreter per run)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from sambench.testing import SHARED_DATA, needs_shared, run_job, run_tool

pytestmark = pytest.mark.slow

TINY = ["trainer.device=cpu"]


def test_train_then_eval_tools_end_to_end(tmp_path):
    """The two tools as processes: a run folder from tools/train.py, evaluated by tools/eval.py."""
    run, out = tmp_path / "run", tmp_path / "eval"
    result = run_tool("tools/train.py", *TINY, "dataset.num_images=2", "trainer.max_steps=1", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((run / "metrics.json").read_text())
    assert trained["step"] == 1 and (run / "checkpoints" / "last.pt").is_file()
    result = run_tool("tools/eval.py", *TINY, "dataset.num_images=2", f"ckpt={run}", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-9) and evaluated["num_images"] == 2


def test_train_run_folder_contents(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "env.json", "metrics.json", "log.jsonl", "train.log", "checkpoints"} <= names
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["method"]["name"] == "sam_prompted" and config["trainer"]["max_steps"] == 20
    assert "${" not in (trained_run / "config.yaml").read_text()  # resolved
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["step"] == 20 and metrics["mIoU"] > 5.0  # 20 steps from a random decoder learn something
    records = [json.loads(line) for line in (trained_run / "log.jsonl").read_text().splitlines()]
    losses = [r["train/loss_dice"] for r in records if "train/loss_dice" in r]
    assert len(losses) == 2 and losses[-1] < losses[0]
    env = json.loads((trained_run / "env.json").read_text())
    assert env["torch"] == torch.__version__


def test_eval_of_run_folder_reproduces_final_metrics_and_saves_predictions(trained_run, tmp_path):
    out = tmp_path / "eval"
    result = run_tool("tools/eval.py", *TINY, "dataset.num_images=5", f"ckpt={trained_run}",
                      "save_predictions=true", "save_overlays=true", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((trained_run / "metrics.json").read_text())
    evaluated = json.loads((out / "metrics.json").read_text())
    assert evaluated["mIoU"] == pytest.approx(trained["mIoU"], abs=1e-9)
    assert len(list((out / "predictions").glob("*.png"))) == 5
    assert len(list((out / "vis").glob("*.png"))) == 5


def test_wandb_offline_writes_its_files(tmp_path):
    out = tmp_path / "run"
    result = run_tool("tools/eval.py", *TINY, "dataset.num_images=2", "logger=wandb", "logger.wandb=offline",
                      f"hydra.run.dir={out}", env={"WANDB_API_KEY": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def assert_user_error(result, *fragments):
    """Exit code 2, exactly one 'error:' line naming what is wrong, and no traceback."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


def test_unknown_method_lists_choices_and_closest(tmp_path):
    result = run_tool("tools/train.py", "method=sam_promptd", cwd=tmp_path)
    assert_user_error(result, "unknown method 'sam_promptd'", "did you mean 'sam_prompted'", "valid:")


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "nope.pt"
    result = run_job("eval", *TINY, f"ckpt={missing}", f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, str(missing))


@pytest.mark.parametrize("content, expected", [(b"", "empty"), (b"\x00garbage", "not a weights file")])
def test_bad_backbone_checkpoint(tmp_path, content, expected):
    bad = tmp_path / "sam.pth"
    bad.write_bytes(content)
    result = run_job("eval", *TINY, f"backbone.checkpoint={bad}", f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, str(bad), expected)


def test_official_backbone_without_weights_says_what_to_download(tmp_path):
    result = run_job("eval", *TINY, "backbone=sam_vit_b", f"backbone.checkpoint={tmp_path / 'x.pth'}",
                     f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, str(tmp_path / "x.pth"), "sam_vit_b_01ec64.pth")


def test_wrong_data_root(tmp_path):
    root = tmp_path / "no_coco"
    result = run_job("eval", *TINY, "dataset=coco_instances", f"dataset.root={root}",
                     f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, str(root))


def test_unreadable_image(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "val2017" / "000000000001.jpg").write_bytes(b"this is not a jpeg")
    annotations = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 16.0,
                         "bbox": [1, 1, 4, 4], "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
        "categories": [{"id": 1, "name": "thing", "supercategory": "thing"}],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(annotations))
    result = run_job("eval", *TINY, "dataset=coco_instances", f"dataset.root={root}",
                     f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, "000000000001.jpg")


def test_traceback_flag_shows_the_trace(tmp_path):
    result = run_tool("tools/eval.py", *TINY, f"ckpt={tmp_path / 'nope.pt'}", "traceback=true",
                      f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode != 0 and "Traceback" in result.stderr and "CheckpointError" in result.stderr


@needs_shared
def test_coco_tiny_zero_shot_eval(tmp_path):
    """The generic COCO adapter on the real sample: every val instance gets one mask."""
    out = tmp_path / "coco"
    result = run_job("eval", *TINY, "dataset=coco_instances", f"dataset.root={SHARED_DATA / 'coco_tiny'}",
                     "dataset.max_images=4", "method.finetune=none", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["num_instances"] > 4
