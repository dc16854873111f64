"""SAM2CLIP (Open-Vocabulary SAM stage 1) on a tiny SAM teacher and a tiny ResNet CLIP, and the
image-folder dataset it trains on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sambench.testing import TINY_SAM
from PIL import Image

from sambench.backbones.sam import SamBackbone
from sambench.errors import DatasetError
from sambench.evaluation.distillation import EmbeddingDistillationEvaluator
from sambench.registry import DATASETS, METHODS, load_plugins
from sambench.structures import Batch, Sample

load_plugins()
CLIP = {"model": "tiny_rn", "allow_random_init": True}


def images(n: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def build(tmp_path):
    torch.manual_seed(0)
    sam = SamBackbone(**TINY_SAM, cache_dir=str(tmp_path / "cache"))
    return METHODS.get("sam2clip")(sam=sam, clip=CLIP, depth=2, num_heads=2)


@pytest.mark.slow
def test_only_the_adapter_trains_and_the_mse_falls(tmp_path):
    model = build(tmp_path)
    params = model.trainable_parameters()
    assert params and all(name.startswith("adapter.") for name in params)
    assert torch.equal(model.adapter.pos_embed, model.sam._raw_sam().image_encoder.pos_embed)  # SAM's, copied
    batch = Batch([Sample(index=i, image=image) for i, image in enumerate(images())])
    teacher_runs = [0]
    model.sam._raw_sam().image_encoder.register_forward_hook(lambda *a: teacher_runs.__setitem__(0, teacher_runs[0] + 1) or None)
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model.training_step(batch)["loss_mse"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert teacher_runs[0] == 2  # one teacher pass per image, then the cache
    predictions = model.predict(batch)
    evaluator = EmbeddingDistillationEvaluator()
    evaluator.process(batch, predictions)
    metrics = evaluator.compute()
    assert metrics["num_images"] == 2 and metrics["mse"] == pytest.approx(np.mean([p.embedding_mse for p in predictions]))
    assert -1 <= metrics["cosine"] <= 1


def test_image_folder_holds_out_the_last_images(tmp_path):
    for i, image in enumerate(images(5)):
        (tmp_path / "shard").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / "shard" / f"sa_{i}.jpg")
    (tmp_path / "shard" / "sa_0.json").write_text("{}")  # SA-1B annotations beside: ignored
    train = DATASETS.get("image_folder")(split="train", root=str(tmp_path), eval_images=2)
    evaluation = DATASETS.get("image_folder")(split="eval", root=str(tmp_path), eval_images=2)
    assert [s.name for s in train.files] == ["sa_0.jpg", "sa_1.jpg", "sa_2.jpg"]
    assert [s.name for s in evaluation.files] == ["sa_3.jpg", "sa_4.jpg"]
    assert evaluation[0].image.shape == (48, 64, 3) and evaluation[0].meta["file_name"] == "shard/sa_3.jpg"
    with pytest.raises(DatasetError, match="needs more"):
        DATASETS.get("image_folder")(split="train", root=str(tmp_path), eval_images=5)
