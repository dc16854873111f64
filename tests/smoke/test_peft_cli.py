"""method.peft from the command line, for every method that trains (sam_prompted, DIT, SSPrompt,
CLIP2SAM) on tiny presets: a LoRA run trains, resumes in its folder, evaluates with the adapters
the checkpoint recorded (merged and unmerged give the same metrics), and exports merged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sambench.checkpoint import LAST
from sambench.cli.export_official import export_run
from sambench.testing import run_job
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
from sambench.testing.semantic_synthetic import write_synthetic_cityscapes

pytestmark = pytest.mark.slow
CPU = ("trainer.device=cpu",)


def sam_prompted(tmp: Path) -> tuple[str, ...]:
    return ("method=sam_prompted", "dataset.num_images=4")


def dit(tmp: Path) -> tuple[str, ...]:
    root = write_synthetic_refcoco(tmp / "refer", num_images=12)
    return ("method=dit_layerwise", f"dataset.root={root}", "trainer.batch_size=2", "trainer.eval.batch_size=4")


def ssprompt(tmp: Path) -> tuple[str, ...]:
    root = write_synthetic_cityscapes(tmp / "cityscapes", train_images=4, val_images=2)
    return ("method=ssprompt", f"dataset.root={root}", "method.grid=2", "trainer.batch_size=2")


def clip2sam(tmp: Path) -> tuple[str, ...]:
    root = write_synthetic_coco(tmp / "coco", num_images=3)
    return ("method=clip2sam", f"dataset.root={root}", "method.adapter.depth=1", "method.adapter.num_heads=2",
            "method.num_prompts=4", "method.num_points=256", "trainer.batch_size=1")


#: method -> (its arguments, the preset that fits it: LoRA where its model trains)
METHODS = {"sam_prompted": (sam_prompted, "lora"), "dit": (dit, "lora"), "ssprompt": (ssprompt, "lora_decoder"),
           "clip2sam": (clip2sam, "lora_decoder")}


@pytest.mark.parametrize("name", list(METHODS))
def test_lora_trains_resumes_evaluates_and_merges(name, tmp_path):
    make, preset = METHODS[name]
    args = (*make(tmp_path), *CPU)
    run = tmp_path / "run"
    result = run_job("train", *args, f"method/peft={preset}", "trainer.max_steps=2", "trainer.optim.lr=1e-2",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "method.peft: lora on" in result.stderr
    first = torch.load(run / "checkpoints" / LAST, weights_only=True)
    lora = [key for key in first["trainable"] if ".lora_" in key]
    assert lora and first["step"] == 2 and first["meta"]["peft"]["adapter"] == "lora"
    assert any(first["trainable"][key].abs().sum() > 0 for key in lora if ".lora_B." in key)  # trained away from 0

    result = run_job("train", *args, f"method/peft={preset}", "trainer.max_steps=3", "trainer.optim.lr=1e-2",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / LAST} at step 2" in result.stderr
    assert torch.load(run / "checkpoints" / LAST, weights_only=True)["step"] == 3

    metrics = {}
    for merge in ("true", "false"):  # no method/peft: the checkpoint's settings are used
        result = run_job("eval", *args, f"ckpt={run}", f"method.peft.merge={merge}", f"hydra.run.dir={tmp_path / merge}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "method.peft from checkpoint" in result.stderr
        assert ("adapted layers folded into their weights" in result.stderr) == (merge == "true")
        metrics[merge] = {k: v for k, v in result.metrics.items() if isinstance(v, float)}
    assert metrics["true"] == pytest.approx(metrics["false"], abs=1e-6)

    wrong = run_job("eval", *args, f"ckpt={run}", f"method/peft={preset}", "method.peft.rank=2",
                    f"hydra.run.dir={tmp_path / 'wrong'}")
    assert wrong.returncode == 2 and "was trained with method.peft=" in wrong.stderr
    if name == "clip2sam":
        _ovsam_reads_the_lora_stage(args, run, tmp_path)


def _ovsam_reads_the_lora_stage(args: tuple[str, ...], run: Path, tmp_path: Path) -> None:
    """Open-Vocabulary SAM built from the LoRA-trained CLIP2SAM run (adapters rebuilt, filled and
    merged on load) predicts what it predicts from that run exported to the authors' layout."""
    (official,) = [p for p in export_run(run, tmp_path / "official") if p.name.startswith("clip2sam_")]
    common = [a.replace("method=clip2sam", "method=ovsam") for a in args if not a.startswith("method.num_points")]
    metrics = []
    for stage in (run, official):
        result = run_job("eval", *common, "method.prompt=point", f"method.clip2sam_checkpoint={stage}",
                         f"hydra.run.dir={tmp_path / ('ovsam_' + stage.name)}")
        assert result.returncode == 0, result.stderr[-3000:]
        metrics.append({k: v for k, v in result.metrics.items() if isinstance(v, float)})
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-6)


def test_export_merges_the_adapters_into_the_official_layout(tmp_path):
    """DIT with LoRA on the ViT attention: the authors' file holds plain SAM keys, and block 0's
    qkv weight is the base weight plus (alpha / rank) B A of the run's EMA adapters."""
    from sambench_plugins.methods.dit.official_checkpoint import official_name

    run = tmp_path / "run"
    result = run_job("train", *dit(tmp_path), *CPU, "method/peft=lora", "trainer.max_steps=2", "trainer.optim.lr=1e-2",
                     f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = export_run(run, tmp_path / "official")
    state = torch.load(path, weights_only=True)["state_dict"]
    assert not [key for key in state if "lora_" in key or "base_layer" in key]
    shadow = torch.load(run / "checkpoints" / LAST, weights_only=True)["ema"]["shadow"]
    prefix = "sam.sam.image_encoder.blocks.0.attn.qkv"
    a, b = shadow[f"{prefix}.lora_A.default.weight"], shadow[f"{prefix}.lora_B.default.weight"]
    base = _base_qkv(run)
    merged = state[official_name(f"{prefix}.weight")]
    torch.testing.assert_close(merged, base + (16.0 / 8) * b @ a)
    assert not torch.equal(merged, base)


def _base_qkv(run: Path) -> torch.Tensor:
    """Block 0's qkv weight of the model a run folder's config builds without adapters, untrained."""
    from sambench.cli.build import build_backbone, build_method
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run / "config.yaml")
    cfg.cache.enabled, cfg.method.peft = False, None
    model = build_method(cfg, build_backbone(cfg))
    return model.state_dict()["sam.sam.image_encoder.blocks.0.attn.qkv.weight"]
