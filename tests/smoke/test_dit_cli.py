"""The DIT-SAM command-line contract (issue: DIT-SAM on RefCOCO/+/g), on a generated RefCOCO-layout
dataset (real file formats: instances.json, refs(unc).p, train2014 JPEGs)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from sambench.testing import TINY_SAM, run_job, run_tool

from sambench.backbones.sam import SamBackbone
from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
from sambench_plugins.methods.dit.official_checkpoint import export_official_dit
from sambench.registry import DATASETS, METHODS, load_plugins
from sambench.structures import Batch

pytestmark = pytest.mark.slow

TINY = ["trainer.device=cpu", "trainer.batch_size=2", "trainer.eval.batch_size=4"]
RIS_KEYS = {"oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9"}


@pytest.fixture(scope="module")
def refer_root(tmp_path_factory):
    return write_synthetic_refcoco(tmp_path_factory.mktemp("refer"), num_images=12)


@pytest.fixture(scope="module")
def dit_run(refer_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dit") / "run"
    result = run_job("train", "method=dit_layerwise", f"dataset.root={refer_root}", "trainer.max_steps=4",
                     "trainer.optim.lr=1e-3", *TINY, f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_training_writes_ema_checkpoint_and_metrics(dit_run):
    metrics = json.loads((dit_run / "metrics.json").read_text())
    assert RIS_KEYS <= set(metrics) and metrics["step"] == 4
    state = torch.load(dit_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["ema"]["num_updates"] == 4
    name = "injection.projections.0.weight"
    assert state["trainable"][name].abs().max() > 0  # zero-initialised, moved by training
    assert not torch.equal(state["ema"]["shadow"][name], state["trainable"][name])


def test_eval_contract_uses_the_ema_weights(dit_run, refer_root, tmp_path):
    out = tmp_path / "eval"
    result = run_job("eval", "method=dit_layerwise", "dataset=refcoco", "split=val", f"dataset.root={refer_root}",
                     f"ckpt={dit_run}", *TINY, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert RIS_KEYS <= set(metrics)
    trained = json.loads((dit_run / "metrics.json").read_text())
    assert metrics["oIoU"] == pytest.approx(trained["oIoU"]) and metrics["num_samples"] == trained["num_samples"]
    raw = tmp_path / "raw"
    result = run_job("eval", "method=dit_layerwise", f"dataset.root={refer_root}", f"ckpt={dit_run}",
                     "use_ema=false", *TINY, f"hydra.run.dir={raw}")
    assert result.returncode == 0, result.stderr[-3000:]


def test_split_selects_the_named_split_and_rejects_unknown_ones(refer_root, tmp_path):
    out = tmp_path / "testA"
    result = run_job("eval", "method=sam_text", "split=testA", f"dataset.root={refer_root}", *TINY, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    refs = pickle.loads((refer_root / "refcoco" / "refs(unc).p").read_bytes())  # our own generated file
    expected = sum(len(r["sentences"]) for r in refs if "A" in r["split"])
    assert json.loads((out / "metrics.json").read_text())["num_samples"] == expected
    bad = run_job("eval", "method=sam_text", "split=testC", f"dataset.root={refer_root}", *TINY,
                  f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "testC" in bad.stderr and "testA" in bad.stderr
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_a_malicious_refs_pickle_is_refused_before_anything_runs(refer_root, tmp_path):
    root = tmp_path / "evil"
    write_synthetic_refcoco(root, num_images=8)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Payload()], protocol=2))
    result = run_job("eval", "method=sam_text", f"dataset.root={root}", *TINY, f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "refs(unc).p" in result.stderr and "global" in result.stderr
    assert not marker.exists() and not (tmp_path / "out" / "metrics.json").exists()


def test_real_backbone_without_bert_folder_is_a_clear_error(refer_root, tmp_path):
    result = run_job("eval", "experiment=dit_vit_b", "backbone.checkpoint=null", "backbone.allow_random_init=true",
                     f"method.text_encoder.path={tmp_path / 'bert-base-uncased'}", f"dataset.root={refer_root}",
                     "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert "bert-base-uncased" in result.stderr and "config.json" in result.stderr


def test_official_checkpoint_loads_and_predictions_include_the_logits(refer_root, tmp_path):
    """An official-layout DIT file (here: exported from a tiny donor, DDP prefix) fills the model
    built by tools/eval.py; save_predictions=true writes <sent_id>.png and the 512² float32
    logits <sent_id>.npy, equal to the donor's own prediction."""
    load_plugins()
    torch.manual_seed(7)
    donor = METHODS.get("dit_layerwise")(sam=SamBackbone(**TINY_SAM), text_encoder={"allow_random_init": True}).eval()
    with torch.no_grad():
        for layer in donor.injection.projections:
            layer.weight.normal_(0, 0.2)
    path = tmp_path / "seg_best.pth"
    torch.save(export_official_dit(donor, ddp_prefix=True), path)
    out = tmp_path / "eval"
    result = run_job("eval", "method=dit_layerwise", f"dataset.root={refer_root}", f"method.official_checkpoint={path}",
                     "method.text_encoder.size=tiny", "save_predictions=true", *TINY, f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded official DIT checkpoint" in (out / "eval.log").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    pngs, arrays = sorted((out / "predictions").glob("*.png")), sorted((out / "predictions").glob("*.npy"))
    assert len(pngs) == len(arrays) == metrics["num_samples"] > 0
    assert [p.stem for p in pngs] == [a.stem for a in arrays]
    sample = DATASETS.get("refcoco")(split="eval", root=str(refer_root))[0]
    logits = np.load(out / "predictions" / f"{sample.meta['sent_id']}.npy")
    assert logits.shape == (512, 512) and logits.dtype == np.float32
    expected = donor.predict(Batch([sample]))[0].logits.numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    bad = run_job("eval", "method=dit_layerwise", f"dataset.root={refer_root}", f"method.official_checkpoint={path}",
                  *TINY, f"hydra.run.dir={tmp_path / 'bad'}")
    assert bad.returncode == 2 and "method.text_encoder.tokenizer" in bad.stderr


def test_benchmark_script_prints_the_side_by_side_table():
    result = run_tool("tools/bench_dit.py", "--backbone", "sam_tiny", "--repeats", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [row.split("|")[1].strip().split(" ")[0] for row in rows] == ["dit_layerwise", "sam_text", "sam_text"]
    assert "L-DIT overhead over sam_text" in result.stdout


def test_export_official_tool_writes_the_runs_ema_weights(dit_run, tmp_path):
    """tools/export_official.py on a trained run: the authors' layout, holding the run's EMA tensors."""
    from sambench_plugins.methods.dit.official_checkpoint import official_name

    result = run_tool("tools/export_official.py", str(dit_run), "--out", str(tmp_path / "official"), "--ddp-prefix")
    assert result.returncode == 0, result.stderr[-3000:]
    exported = torch.load(tmp_path / "official" / "dit_dit_layerwise.pth", weights_only=True)
    assert set(exported) == {"epoch", "state_dict", "lr"}
    state = exported["state_dict"]
    assert all(key.startswith("module.") for key in state)
    ema = torch.load(dit_run / "checkpoints" / "last.pt", weights_only=True)["ema"]["shadow"]
    checked = 0
    for name, tensor in ema.items():
        official = official_name(name)
        if official is not None:
            assert torch.equal(state[f"module.{official}"], tensor), name
            checked += 1
    assert checked == len(ema) and "module.visual_encoder.probs.0.weight" in state
