"""Bad data files through the command line: exit 2, exactly one `error:` line naming the file,
no traceback, no crash (issue 13). Few runs: each costs a few seconds; the cases themselves are
covered in tests/unit/test_bad_data_files.py (a bad image file takes the same path as
tests/smoke/test_cli.py::test_unreadable_image)."""

from __future__ import annotations

import pytest

import json

import numpy as np
from sambench.testing import run_tool
from PIL import Image

pytestmark = pytest.mark.slow

TINY = ["trainer.device=cpu"]


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def write_coco(root, annotations):
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "val2017" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}], "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return [*TINY, "dataset=coco_instances", f"dataset.root={root}"]


def annotation(polygon):
    return {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 16.0, "bbox": [1, 1, 4, 4],
            "segmentation": [polygon]}


def test_empty_annotations_is_an_error_not_a_null_metric(tmp_path):
    result = run_tool("tools/eval.py", *write_coco(tmp_path / "c", []), f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, "instances_val2017.json", "no image has an annotation")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_huge_polygon_does_not_crash(tmp_path):
    """pycocotools segfaulted (exit 139) on a 1e12 coordinate; now the annotation is skipped with a
    warning, and with nothing left the run stops with one error line."""
    args = write_coco(tmp_path / "c", [annotation([1, 1, 1e12, 1, 5, 5, 1, 5])])
    result = run_tool("tools/eval.py", *args, f"hydra.run.dir={tmp_path / 'r'}")
    assert_user_error(result, "instances_val2017.json", "1 skipped")
    assert "x = 1e+12" in result.stderr  # the warning names the annotation and the coordinate

