"""The one-shot benchmarks end to end (issue 19): PerSAM / PerSAM-F on generated copies of the
COCO-20i, FSS-1000 and LVIS-92i layouts, the saved episode list and its reuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sambench.testing import run_job, run_tool
from sambench.testing.oneshot_synthetic import (
    write_synthetic_coco20i, write_synthetic_fss1000, write_synthetic_lvis92i,
)

pytestmark = pytest.mark.slow


def check_run(out, image_root) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mIoU", "FB-IoU", "bIoU", "per_object", "num_images"} <= set(metrics)
    episodes = json.loads((out / "episodes.json").read_text())["episodes"]
    assert metrics["num_images"] == len(episodes)
    for index, episode in enumerate(episodes):
        written = list((out / "predictions").glob(f"*/{index:05d}.png"))
        assert len(written) == 1
        image = Image.open(image_root / episode["query"])
        assert np.array(Image.open(written[0])).shape == (image.height, image.width)  # scored at the query's size
    return metrics


def test_tools_eval_persam_on_coco20i_fold0_and_its_episode_list(tmp_path):
    root = write_synthetic_coco20i(tmp_path / "COCO2014")
    out = tmp_path / "run"
    result = run_tool("tools/eval.py", "method=persam", "dataset=coco20i", "dataset.fold=0", f"dataset.root={root}",
                      "dataset.episodes=6", "backbone=sam_tiny", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run(out, root)
    again = tmp_path / "again"
    result = run_job("eval", "method=persam", "dataset=coco20i", f"dataset.root={root}", "backbone=sam_tiny",
                     f"dataset.episodes_file={out / 'episodes.json'}", f"hydra.run.dir={again}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((again / "metrics.json").read_text())["FB-IoU"] == metrics["FB-IoU"]
    assert (again / "episodes.json").read_text().count('"query"') == 6


def test_persam_f_on_fss1000_names_weights_by_concept(tmp_path):
    root = write_synthetic_fss1000(tmp_path / "FSS-1000", matcher_layout=True)
    out = tmp_path / "run"
    result = run_job("eval", "method=persam_f", "method.iterations=5", "dataset=fss1000", f"dataset.root={root}",
                     "dataset.max_samples=3", "backbone=sam_tiny", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(out, root / "data")
    episodes = json.loads((out / "episodes.json").read_text())["episodes"]
    concepts = {f"{e['class']}__{e['support'][:-4].replace('/', '_')}" for e in episodes}
    assert {p.stem for p in (out / "persam_f_weights").glob("*.pt")} == concepts


def test_persam_on_lvis92i(tmp_path):
    root = write_synthetic_lvis92i(tmp_path / "LVIS")
    out = tmp_path / "run"
    result = run_job("eval", "method=persam", "dataset=lvis92i", "dataset.fold=3", f"dataset.root={root}",
                     "dataset.episodes=4", "backbone=sam_tiny", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run(out, root / "coco")
    assert metrics["num_objects"] == 2
