"""The PerSAM command-line contract (issue: PerSAM and PerSAM-F on PerSeg)."""

from __future__ import annotations

import pytest

import json

from sambench.testing import REPO, SHARED_DATA, needs_shared, run_job
from PIL import Image
import numpy as np

pytestmark = pytest.mark.slow

BUNDLED = REPO / "datasets" / "perseg_sample"


def check_outputs(out, root):
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mIoU", "bIoU", "per_object", "fallbacks"} <= set(metrics)
    objects = sorted(p.name for p in (root / "Images").iterdir())
    assert sorted(metrics["per_object"]) == objects
    for obj in objects:
        ids = sorted(p.stem for p in (root / "Images" / obj).glob("*.jpg") if p.stem != "00")
        written = sorted(p.stem for p in (out / "predictions" / obj).glob("*.png"))
        assert written == ids
        image = Image.open(root / "Images" / obj / f"{ids[0]}.jpg")
        mask = np.array(Image.open(out / "predictions" / obj / f"{ids[0]}.png"))
        assert mask.shape == (image.height, image.width)
    return metrics


def test_persam_with_no_argument_runs_on_the_bundled_sample(tmp_path):
    out = tmp_path / "persam"
    result = run_job("eval", "method=persam", "save_overlays=true", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    check_outputs(out, BUNDLED)
    assert len(list((out / "vis").rglob("*.png"))) == 6


def test_persam_f_saves_weights_and_reuses_them(tmp_path):
    first, second = tmp_path / "fit", tmp_path / "reuse"
    args = ["eval", "method=persam_f", "method.iterations=50"]
    result = run_job(*args, f"hydra.run.dir={first}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_outputs(first, BUNDLED)
    assert sorted(p.stem for p in (first / "persam_f_weights").glob("*.pt")) == sorted(metrics["per_object"])
    result = run_job(*args, f"method.weights_dir={first / 'persam_f_weights'}", f"hydra.run.dir={second}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((second / "metrics.json").read_text())["mIoU"] == metrics["mIoU"]
    assert not (second / "persam_f_weights").exists()  # nothing refitted


@needs_shared
def test_persam_on_the_shared_perseg_sample(tmp_path):
    out = tmp_path / "shared"
    root = SHARED_DATA / "perseg"
    result = run_job("eval", "method=persam", "dataset=perseg", f"dataset.root={root}",
                     "backbone=sam_tiny", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    check_outputs(out, root)


def test_empty_reference_mask_is_one_clear_error(tmp_path):
    root = tmp_path / "perseg"
    for folder in ("Images/toy", "Annotations/toy"):
        (root / folder).mkdir(parents=True)
    for name in ("00", "01"):
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(root / "Images" / "toy" / f"{name}.jpg")
        Image.fromarray(np.zeros((40, 50), np.uint8)).save(root / "Annotations" / "toy" / f"{name}.png")
    result = run_job("eval", "method=persam", f"dataset.root={root}", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "empty reference mask" in result.stderr and "00.png" in result.stderr
