"""The SSPrompt command-line contract (issue: SSPrompt few-shot semantic segmentation), on
generated Cityscapes/ACDC copies in the real layouts and on the shared real Cityscapes frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sambench.testing import SHARED_DATA, needs_shared, run_job, run_tool
from PIL import Image

from sambench.testing.semantic_synthetic import write_synthetic_acdc, write_synthetic_cityscapes

pytestmark = pytest.mark.slow

FAST = ["method.grid=2", "trainer.device=cpu", "trainer.batch_size=2", "trainer.eval.batch_size=2"]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    return write_synthetic_cityscapes(tmp_path_factory.mktemp("cityscapes"), train_images=4, val_images=2)


@pytest.fixture(scope="module")
def ssprompt_run(cityscapes, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ssprompt") / "run"
    result = run_job("train", "method=ssprompt", f"dataset.root={cityscapes}", "dataset.few_shot.shots=1",
                     "trainer.max_steps=2", *FAST, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_training_saves_the_few_shot_selection_and_it_can_be_reused(ssprompt_run, cityscapes, tmp_path):
    selection = json.loads((ssprompt_run / "few_shot_selection.json").read_text())
    assert selection["shots"] == 1 and 1 <= len(selection["files"]) <= 4
    again = tmp_path / "again"
    result = run_job("train", "method=ssprompt", f"dataset.root={cityscapes}", "dataset.few_shot.shots=3",
                     f"dataset.few_shot.file={ssprompt_run / 'few_shot_selection.json'}", "trainer.max_steps=1", *FAST,
                     f"hydra.run.dir={again}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((again / "few_shot_selection.json").read_text())["files"] == selection["files"]


def test_eval_contract_writes_miou_per_class_and_class_index_pngs(ssprompt_run, cityscapes, tmp_path):
    out = tmp_path / "eval"
    result = run_job("eval", "method=ssprompt", "dataset=cityscapes", f"dataset.root={cityscapes}",
                     f"ckpt={ssprompt_run}", "save_predictions=true", "save_overlays=true", *FAST, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 100 and len(metrics["per_class"]) == 19 and "road" in metrics["per_class"]
    predictions = sorted((out / "predictions").rglob("*.png"))
    assert len(predictions) == 2 and len(list((out / "vis").rglob("*.png"))) == 2
    labels = np.array(Image.open(predictions[0]))
    image = next((cityscapes / "leftImg8bit" / "val").rglob("*.png"))
    assert labels.shape == Image.open(image).size[::-1] and labels.max() < 19


def test_acdc_reports_per_condition_and_mean(tmp_path):
    root = write_synthetic_acdc(tmp_path / "acdc", train_images=1, val_images=1)
    out = tmp_path / "eval"
    result = run_job("eval", "method=zero_shot_prompts", "dataset=acdc", f"dataset.root={root}", *FAST,
                     f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["per_condition"]) == ["fog", "night", "rain", "snow"]
    assert metrics["mIoU_condition_mean"] == pytest.approx(np.mean(list(metrics["per_condition"].values())))


@needs_shared
def test_zero_shot_on_the_shared_cityscapes_frame(tmp_path):
    out = tmp_path / "eval"
    result = run_job("eval", "method=zero_shot_prompts", "dataset=cityscapes",
                     f"dataset.root={SHARED_DATA / 'cityscapes'}", *FAST, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    label = next((SHARED_DATA / "cityscapes" / "gtFine" / "val").rglob("*_labelTrainIds.png"))
    assert metrics["num_pixels"] == int((np.array(Image.open(label)) != 255).sum()) and len(metrics["per_class"]) == 19


def test_efficiency_script_prints_both_methods_side_by_side():
    result = run_tool("tools/bench_ssprompt.py", "--steps", "1", "--grid", "2", "--classes", "5", "--batch", "1",
                      "--height", "64", "--width", "96", "--dense-size", "224", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert rows == ["ssprompt", "semprompt", "coop"] and "ssprompt vs coop: time" in result.stdout
