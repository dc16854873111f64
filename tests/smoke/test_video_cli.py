"""DAVIS 2017 end to end (issue 19): PerSAM, PerSAM-F and SAM 3 track every object of generated
sequences in the real DAVIS layout; predictions in the toolkit's layout; J, F, J&F in metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sambench.evaluation.video import score_sequence
from sambench.testing import run_job, run_tool, scores
from sambench.testing.davis_synthetic import write_davis

pytestmark = pytest.mark.slow

SEQUENCES = {"blackswan-syn": (4, 40, 56, 1), "dogs-syn": (4, 36, 48, 2)}
KEYS = {"J&F", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay", "per_object", "per_sequence"}


def check_run(out, root) -> dict:
    """Every frame written as an indexed PNG of the frame's size; the metrics equal the J / F of
    those files scored against the annotation files (both read here with PIL)."""
    metrics = json.loads((out / "metrics.json").read_text())
    assert KEYS <= set(metrics) and metrics["num_sequences"] == len(SEQUENCES)
    j_means = []
    for name, (frames, height, width, count) in SEQUENCES.items():
        written = sorted((out / "predictions" / name).glob("*.png"))
        assert [p.stem for p in written] == [f"{t:05d}" for t in range(frames)]
        predicted = np.stack([np.array(Image.open(p)) for p in written])
        assert Image.open(written[0]).mode == "P" and predicted.shape == (frames, height, width)
        truth = np.stack([np.array(Image.open(root / "Annotations" / "480p" / name / f"{t:05d}.png")) for t in range(frames)])
        assert np.array_equal(predicted[0], np.where(truth[0] == 255, 0, truth[0]))  # frame 0: the given masks
        objects = score_sequence(truth, predicted, name)
        assert len(objects) == count
        j_means += [np.mean(o["J"]) for o in objects]
    assert metrics["J-Mean"] == pytest.approx(100 * np.mean(j_means))
    return metrics


def test_tools_eval_persam_on_davis2017(tmp_path):
    root = write_davis(tmp_path / "DAVIS", SEQUENCES)
    out = tmp_path / "run"
    result = run_tool("tools/eval.py", "method=persam", "dataset=davis2017", f"dataset.root={root}", "backbone=sam_tiny",
                      "save_overlays=true", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(out, root)
    assert sorted(p.name for p in (out / "vis").rglob("*.png")) == ["blackswan-syn.png", "dogs-syn.png"]


def test_persam_f_on_davis2017_fits_per_object_and_reuses_the_weights(tmp_path):
    root = write_davis(tmp_path / "DAVIS", SEQUENCES)
    args = ["eval", "method=persam_f", "method.video.iterations=5", "dataset=davis2017", f"dataset.root={root}",
            "backbone=sam_tiny"]
    result = run_job(*args, f"hydra.run.dir={tmp_path / 'fit'}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = check_run(tmp_path / "fit", root)
    weights = tmp_path / "fit" / "persam_f_weights"
    assert sorted(p.stem for p in weights.glob("*.pt")) == ["blackswan-syn_1", "dogs-syn_1", "dogs-syn_2"]
    result = run_job(*args, f"method.weights_dir={weights}", f"hydra.run.dir={tmp_path / 'reuse'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert scores(tmp_path / "reuse") == scores(tmp_path / "fit") and metrics["J&F"] == scores(tmp_path / "reuse")["J&F"]
    assert not (tmp_path / "reuse" / "persam_f_weights").exists()


def test_sam3_exemplars_on_davis2017(tmp_path):
    root = write_davis(tmp_path / "DAVIS", SEQUENCES)
    out = tmp_path / "run"
    result = run_job("eval", "method=sam3", "backbone=sam3_tiny", "dataset=davis2017", f"dataset.root={root}", "save_predictions=true",
                     f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(out, root)
