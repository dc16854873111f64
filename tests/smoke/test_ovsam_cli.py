"""Open-Vocabulary SAM stage 1 (SAM2CLIP) from the command line, on a generated image folder."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import run_tool
from PIL import Image


def test_sam2clip_trains_and_reports_the_distillation_error(tmp_path):
    folder = tmp_path / "sa1b"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"sa_{i}.jpg")
    out = tmp_path / "run"
    result = run_tool("tools/train.py", "method=sam2clip", f"dataset.root={folder}", "dataset.eval_images=1",
                      "method.depth=2", "method.num_heads=2", "trainer.max_steps=2", "trainer.schedule.warmup_steps=0",
                      "trainer.device=cpu", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 1 and metrics["mse"] > 0 and -1 <= metrics["cosine"] <= 1
    trainable = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["trainable"]
    assert trainable and all(name.startswith("adapter.") for name in trainable)
