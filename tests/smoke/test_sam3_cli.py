"""SAM 3 zero-shot from the command line (issue: SAM 3 as the zero-shot reference row on every
task): `tools/eval.py method=sam3 dataset=<each task's dataset>` on generated copies of the real
layouts with a local checkpoint file (random weights of the small preset), and the leaderboard
row beside an adapted method."""

from __future__ import annotations

import json

import pytest
import torch

from sambench.backbones.sam3 import Sam3ConceptModel
from sambench.testing import run_job, run_tool
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.testing.lvis_synthetic import write_synthetic_lvis
from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
from sambench.testing.semantic_synthetic import write_synthetic_ade20k, write_synthetic_cityscapes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A local SAM 3 file in the released layout (``{"model": {"detector.*", "tracker.*"}}``)
    holding the small preset's weights with another seed than the config's."""
    model = Sam3ConceptModel(name="sam3_tiny", variant="tiny", init_seed=7)
    state = {f"detector.{key}": value for key, value in model._raw_model().state_dict().items()}
    state["tracker.unused.weight"] = torch.zeros(2)
    path = tmp_path_factory.mktemp("weights") / "sam3_tiny.pt"
    torch.save({"model": state}, path)
    return path


def evaluate(tmp_path, checkpoint, dataset: str, *overrides: str) -> dict:
    out = tmp_path / dataset
    result = run_job("eval", "method=sam3", "backbone=sam3_tiny", f"backbone.checkpoint={checkpoint}",
                     f"dataset={dataset}", "method.concept_batch=4", f"hydra.run.dir={out}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_open_vocabulary_box_and_detector_free_protocols(tmp_path, checkpoint):
    root = write_synthetic_coco(tmp_path / "coco", num_images=2)
    boxes = evaluate(tmp_path / "box", checkpoint, "coco_ov", f"dataset.root={root}", "save_predictions=true")
    assert 0 <= boxes["IoU"] <= 100 and 0 <= boxes["Acc"] <= 100 and boxes["num_instances"] > 0
    written = sorted(p.name for p in (tmp_path / "box" / "coco_ov" / "predictions").glob("*_*.png"))
    assert len(written) == boxes["num_instances"]  # one mask per GT instance, <image_id>_<ann_id>.png
    detected = evaluate(tmp_path / "det", checkpoint, "coco_ov", f"dataset.root={root}",
                        "method.protocol=detector_free", "method.max_detections=5")
    assert "AP" in detected and 0 < detected["num_detections"] <= 5 * 2


def test_lvis_detector_free_with_all_and_with_verified_concepts(tmp_path, checkpoint):
    """Both concept sets run end to end and give mask AP; ``verified`` grounds fewer classes. (The
    random model's AP is 0 either way; that unverified classes do not change LVIS AP is checked
    on crafted detections in tests/unit/test_open_vocab_data.py.)"""
    root = write_synthetic_lvis(tmp_path / "lvis")
    common = ("method.protocol=detector_free", "method.max_detections=300", "method.concept_names=first_synonym")
    every = evaluate(tmp_path / "all", checkpoint, "lvis", f"dataset.root={root}", *common)
    verified = evaluate(tmp_path / "verified", checkpoint, "lvis", f"dataset.root={root}", *common,
                        "method.concepts=verified")
    assert {"AP", "APr"} <= set(every) and 0 < verified["num_detections"] < every["num_detections"]
    assert all(0 <= metrics[key] <= 100 for metrics in (every, verified) for key in ("AP", "APr", "APc", "APf"))


def test_referring_personalisation_and_semantic(tmp_path, checkpoint):
    write_synthetic_refcoco(tmp_path / "refer", num_images=4, dataset="refcoco", split_by="unc")
    referring = evaluate(tmp_path, checkpoint, "refcoco", f"dataset.root={tmp_path / 'refer'}")
    assert {"oIoU", "mIoU"} <= set(referring) and referring["num_samples"] > 0
    personal = evaluate(tmp_path, checkpoint, "perseg")  # the bundled PerSeg sample
    assert {"mIoU", "bIoU"} <= set(personal)
    cityscapes = evaluate(tmp_path, checkpoint, "cityscapes", f"dataset.root={write_synthetic_cityscapes(tmp_path / 'cs')}")
    ade = evaluate(tmp_path, checkpoint, "ade20k", f"dataset.root={write_synthetic_ade20k(tmp_path / 'ade')}",
                   "method.semantic_scores=instances")
    for metrics in (cityscapes, ade):
        assert 0 <= metrics["mIoU"] <= 100 and metrics["num_pixels"] > 0


def test_leaderboard_puts_the_sam3_row_beside_an_adapted_method(tmp_path, checkpoint):
    evaluate(tmp_path / "runs", checkpoint, "perseg")
    out = tmp_path / "runs" / "persam"
    result = run_job("eval", "method=persam", "backbone=sam_tiny", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    board = run_tool("tools/summarize.py", str(tmp_path / "runs"))
    assert board.returncode == 0, board.stderr[-2000:]
    rows = [line for line in board.stdout.splitlines() if "perseg" in line]
    assert any("sam3" in row and "sam3_tiny" in row for row in rows), board.stdout
    assert any("persam" in row and "sam_tiny" in row for row in rows), board.stdout


def test_missing_checkpoint_names_the_file_to_download(tmp_path):
    result = run_job("eval", "method=sam3", f"backbone.checkpoint={tmp_path / 'sam3.pt'}", f"hydra.run.dir={tmp_path / 'x'}")
    assert result.returncode != 0
    assert "checkpoint not found" in result.stderr and "sam3.pt" in result.stderr and "huggingface.co/facebook/sam3" in result.stderr


def test_other_methods_refuse_sam3_and_sam3_refuses_sam(tmp_path):
    result = run_job("eval", "method=persam", "backbone=sam3_tiny", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode != 0 and "concept model" in result.stderr and "backbones that fit" in result.stderr
    result = run_job("eval", "method=sam3", "backbone=sam_tiny", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode != 0 and "backbones that fit: sam3, sam3_tiny" in result.stderr
