"""Bad config values and a failing evaluation through the command line: exit 2, one ``error:``
line, no traceback, and no half-published results."""

from __future__ import annotations

import pytest

import shutil

from sambench.testing import REPO, run_tool

pytestmark = pytest.mark.slow


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]


def test_wrong_typed_trainer_value_exits_2_before_a_run_folder_exists(tmp_path):
    """Hydra's own override errors take the same path (``compose_checked``; unit-tested)."""
    result = run_tool("tools/train.py", "trainer.max_steps=abc", f"hydra.run.dir={tmp_path / 'a'}")
    assert_one_error_line(result, "trainer.max_steps='abc'", "expected an integer")
    assert not (tmp_path / "a").exists()


def test_failed_evaluation_publishes_no_predictions_and_no_metrics(tmp_path):
    """The last target image is truncated: the evaluation fails after writing the first masks,
    which stay in predictions.incomplete/; predictions/ and metrics.json are never written."""
    root = tmp_path / "perseg"
    shutil.copytree(REPO / "datasets" / "perseg_sample", root)
    broken = root / "Images" / "duck_toy" / "02.jpg"
    broken.write_bytes(broken.read_bytes()[:600])
    out = tmp_path / "run"
    result = run_tool("tools/eval.py", "method=persam", f"dataset.root={root}", "save_predictions=true",
                      f"hydra.run.dir={out}")
    assert_one_error_line(result, "02.jpg")
    assert not (out / "predictions").exists() and not (out / "metrics.json").exists()
    assert list((out / "predictions.incomplete").rglob("*.png"))  # what was done is kept, clearly marked
