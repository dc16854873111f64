"""Open-Vocabulary SAM from the command line: both stages, inference, the text-embedding tool."""

from __future__ import annotations

import pytest

import json
from pathlib import Path

import numpy as np
import torch
from sambench.testing import SHARED_DATA, TINY_SAM, needs_shared, run_job, run_tool, scores
from PIL import Image

from sambench.testing.coco_synthetic import COCO_CATEGORIES, write_synthetic_coco
from sambench.registry import DATASETS, load_plugins

pytestmark = pytest.mark.slow

load_plugins()


def test_sam2clip_trains_and_reports_the_distillation_error(tmp_path):
    folder = tmp_path / "sa1b"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"sa_{i}.jpg")
    out = tmp_path / "run"
    result = run_job("train", "method=sam2clip", f"dataset.root={folder}", "dataset.eval_images=1",
                     "method.depth=2", "method.num_heads=2", "trainer.max_steps=2", "trainer.schedule.warmup_steps=0",
                     "trainer.device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["mse"] > 0 and -1 <= metrics["cosine"] <= 1
    trainable = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert trainable and all(name.startswith("adapter.") for name in trainable)


OV_KEYS = ("IoU", "IoU_base", "IoU_novel", "Acc", "Acc_base", "Acc_novel")
SMALL_ADAPTER = ("method.adapter.depth=1", "method.adapter.num_heads=2")


@needs_shared
def test_ovsam_eval_contract_on_the_coco_sample(tmp_path):
    """The issue's contract: tools/eval.py method=ovsam dataset=coco_ov dataset.root=<coco> -> metrics.json."""
    out = tmp_path / "out"
    result = run_job("eval", "method=ovsam", "dataset=coco_ov", f"dataset.root={SHARED_DATA / 'coco_tiny'}",
                     "dataset.max_images=2", *SMALL_ADAPTER, "trainer.device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(metrics[key], float) and 0 <= metrics[key] <= 100 for key in OV_KEYS)
    assert metrics["num_images"] == 2 and metrics["num_instances"] > 2


def test_both_stages_train_and_ovsam_evaluates_with_their_weights(tmp_path):
    """sam2clip run -> clip2sam run (adapter from stage 1) -> ovsam eval with both runs' weights."""
    coco = write_synthetic_coco(tmp_path / "coco", num_images=3)
    folder = coco / "train2017"
    stage1, stage2, out = tmp_path / "s1", tmp_path / "s2", tmp_path / "eval"
    result = run_job("train", "method=sam2clip", f"dataset.root={folder}", "dataset.eval_images=1",
                     "method.depth=1", "method.num_heads=2", "trainer.max_steps=1", "trainer.device=cpu",
                     f"hydra.run.dir={stage1}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_job("train", "method=clip2sam", f"dataset.root={coco}", *SMALL_ADAPTER,
                     f"method.sam2clip_checkpoint={stage1}", "method.allow_untrained=false", "method.num_prompts=4",
                     "method.num_points=256", "trainer.max_steps=2", "trainer.schedule.warmup_steps=0",
                     "trainer.batch_size=1", "trainer.device=cpu", f"hydra.run.dir={stage2}")
    assert result.returncode == 0, result.stderr[-3000:]
    trained = json.loads((stage2 / "metrics.json").read_text())
    assert all(key in trained for key in OV_KEYS) and trained["num_images"] == 3
    saved = torch.load(stage2 / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert any(k.startswith("fpn.") for k in saved) and not any(k.startswith("adapter.") for k in saved)
    result = run_job("eval", "method=ovsam", f"dataset.root={coco}", *SMALL_ADAPTER, "method.prompt=point",
                     f"method.sam2clip_checkpoint={stage1}", f"method.clip2sam_checkpoint={stage2}",
                     "method.allow_untrained=false", "save_predictions=true", "trainer.device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["num_instances"] == trained["num_instances"]
    # one mask per GT instance, <image_id>_<ann_id>.png at the original size, and its label in labels.json
    gt = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    evaluation = DATASETS.get("coco_ov")(split="eval", root=str(coco))  # the 65 classes' instances
    expected = {f"{image['id']}_{ann['id']}" for image, anns in evaluation.entries for ann in anns}
    labels = json.loads((out / "predictions" / "labels.json").read_text())
    assert set(labels) == expected and not (out / "predictions" / "labels").exists()
    first = next(iter(sorted(expected)))
    size = next((i["height"], i["width"]) for i in gt["images"] if str(i["id"]) == first.split("_")[0])
    mask = np.array(Image.open(out / "predictions" / f"{first}.png"))
    assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
    assert 0 <= labels[first]["class_id"] < 65 and isinstance(labels[first]["class_name"], str)
    # export to the authors' layout; the files load back as official files and carry the run's weights
    result = run_tool("tools/export_official.py", str(stage2), "--out", str(tmp_path / "official"))
    assert result.returncode == 0, result.stderr[-3000:]
    exported = sorted(p.name for p in (tmp_path / "official").iterdir())
    assert exported == ["clip2sam_coco_tiny_rn.pth", "sam2clip_tiny_tiny_rn.pth"]
    head = torch.load(tmp_path / "official" / exported[0], weights_only=True)
    assert torch.equal(head["fpn_neck.fpn_convs.0.conv.weight"], saved["fpn.fpn_convs.0.weight"])
    assert torch.equal(head["mask_decoder.roi_conv.0.conv.weight"], saved["region.proj.weight"])
    neck = torch.load(tmp_path / "official" / exported[1], weights_only=True)
    stage1_weights = torch.load(stage1 / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert torch.equal(neck["neck_student.level_encoding.weight"], stage1_weights["adapter.level_embedding.weight"])
    result = run_job("eval", "method=ovsam", f"dataset.root={coco}", *SMALL_ADAPTER, "method.prompt=point",
                     f"method.sam2clip_checkpoint={tmp_path / 'official' / exported[1]}",
                     f"method.clip2sam_checkpoint={tmp_path / 'official' / exported[0]}",
                     "method.allow_untrained=false", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'eval2'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert scores(tmp_path / "eval2") == scores(out)


def test_missing_stage_one_weights_is_one_clear_error(tmp_path):
    coco = write_synthetic_coco(tmp_path / "coco", num_images=1)
    result = run_job("eval", "method=ovsam", f"dataset.root={coco}", "method.allow_untrained=false",
                     "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: method.sam2clip_checkpoint is not set")


def test_prepare_text_embeddings_fills_the_cache_the_method_reads(tmp_path, monkeypatch):
    coco = write_synthetic_coco(tmp_path / "coco", num_images=1)
    cache = tmp_path / "cache"
    result = run_tool("tools/prepare_text_embeddings.py", "method=ovsam", f"dataset.root={coco}", f"cache.dir={cache}",
                      f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "text_embeddings.json").read_text())
    assert summary["train"]["classes"] == 48 and summary["eval"]["classes"] == 65
    assert all(Path(entry["file"]).is_file() for entry in summary.values())
    from sambench.backbones.sam import SamBackbone
    from sambench_plugins.methods.ovsam import vocabulary
    from sambench.registry import METHODS, load_plugins

    load_plugins()
    monkeypatch.setattr(vocabulary, "build_text_embeddings", None)  # must not be needed: read from the cache
    monkeypatch.setattr("sambench_plugins.methods.ovsam.text_embeddings.build_text_embeddings", None)
    model = METHODS.get("ovsam")(sam=SamBackbone(**TINY_SAM), clip={"model": "tiny_rn", "allow_random_init": True},
                                 adapter={"depth": 1, "num_heads": 2}, allow_untrained=True, cache_dir=str(cache))
    names = DATASETS.get("coco_ov")(split="eval", root=str(coco)).class_names
    assert model.texts(names).shape == tuple(summary["eval"]["shape"])


def test_class_names_file_from_the_tool_drives_the_eval_text_embeddings(tmp_path):
    """tools/make_class_names.py on an official-format file -> tools/eval.py ... dataset.class_names_file=<file>:
    the run embeds every synonym (C×P_max×D in the cache, P_max > 1) and writes its metrics."""
    coco = write_synthetic_coco(tmp_path / "coco", num_images=2)
    names = [name for _, name in COCO_CATEGORIES]
    classes = [f"{name},{name}s,a small_{name}" if name in ("person", "cat") else name for name in names]
    repo = tmp_path / "ovsam" / "seg" / "datasets"
    repo.mkdir(parents=True)
    (repo / "coco_ins_ov.py").write_text(f"CLASSES_ORIGINAL = {tuple(names)!r}\n\n"
                                         f"class CocoOVDataset:\n    METAINFO = {{'classes': {tuple(classes)!r}}}\n")
    file = tmp_path / "names.json"
    result = run_tool("tools/make_class_names.py", "--ovsam-repo", str(tmp_path / "ovsam"), "--out", str(file))
    assert result.returncode == 0, result.stderr[-3000:]
    cache, out = tmp_path / "cache", tmp_path / "eval"
    result = run_job("eval", "method=ovsam", f"dataset.root={coco}", f"dataset.class_names_file={file}",
                     *SMALL_ADAPTER, f"cache.dir={cache}", "trainer.device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(key in json.loads((out / "metrics.json").read_text()) for key in OV_KEYS)
    entries = [torch.load(f, weights_only=True) for f in cache.glob("text-*.pt")]
    assert len(entries) == 1 and tuple(entries[0]["embeddings"].shape[:2]) == (65, 3)
    assert entries[0]["synonyms"][0] == ["person", "persons", "a small person"]
