"""SSPrompt pieces: fusion formula, default prompts computed once, mask classification, the
semantic evaluator, CLIP loading, and training that moves only the prompt parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sambench.testing import TINY_SAM
from safetensors.torch import save_file

from sambench.backbones.clip import ClipBackbone
from sambench.backbones.sam import SamBackbone
from sambench.errors import CheckpointError, ConfigError
from sambench.evaluation.semantic import SemanticEvaluator, confusion, iou_from_confusion
from sambench_plugins.methods.ssprompt.defaults import grid_points
from sambench_plugins.methods.ssprompt.fusion import PromptFusion
from sambench_plugins.methods.ssprompt.mask_classifier import pooled_mask_features, semantic_loss, semantic_scores
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Prediction, Sample

load_plugins()
CLIP = {"model": "tiny", "allow_random_init": True}
CLASSES = ["road", "car", "sky"]


def test_fusion_formula_and_modes():
    defaults = torch.randn(4, 2, 3)
    weighted = PromptFusion(defaults, "weighted")
    with torch.no_grad():
        weighted.learned.copy_(torch.randn(4, 2, 3))
        weighted.weight_logits.copy_(torch.tensor([0.0, 1.0, -2.0, 3.0]))
    w = torch.sigmoid(weighted.weight_logits).view(4, 1, 1)
    torch.testing.assert_close(weighted(), w * defaults + (1 - w) * weighted.learned)
    average = PromptFusion(defaults, "average")
    with torch.no_grad():
        average.learned.add_(1.0)
    torch.testing.assert_close(average(), defaults + 0.5)
    learned = PromptFusion(defaults, "learned")
    assert learned.weight_logits is None and torch.equal(learned(), learned.learned)
    fixed = PromptFusion(defaults, "default")
    assert list(fixed.parameters()) == [] and torch.equal(fixed(), defaults)
    torch.testing.assert_close(PromptFusion(defaults, "weighted")(), defaults)  # E_learn starts as a copy
    with pytest.raises(ConfigError, match="weighted"):
        PromptFusion(defaults, "mixed")


def test_grid_points_cover_the_image_region_of_the_frame():
    points = grid_points(2, aspect=2.0)
    assert points.tolist() == [[256.0, 128.0], [768.0, 128.0], [256.0, 384.0], [768.0, 384.0]]
    assert grid_points(10, aspect=0.5)[:, 0].max() < 512 and len(grid_points(10, 1.0)) == 100


def test_mask_classifier_by_hand():
    features = torch.zeros(2, 4, 4)
    features[0, :, :2] = 1.0  # left half: class direction e0
    features[1, :, 2:] = 1.0  # right half: e1
    masks = torch.full((2, 4, 4), -20.0)
    masks[0, :, :2] = 20.0
    masks[1, :, 2:] = 20.0
    pooled = pooled_mask_features(masks, features)
    torch.testing.assert_close(pooled, torch.eye(2), atol=1e-4, rtol=0)
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    scores = semantic_scores(probabilities, masks)
    torch.testing.assert_close(scores[:, 0, 0], torch.tensor([0.9, 0.1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(scores[:, 0, 3], torch.tensor([0.2, 0.8]), atol=1e-6, rtol=0)
    target = torch.tensor([[0, 0, 1, 255]] * 4)
    expected = -(np.log(0.9) * 8 + np.log(0.8) * 4) / 12
    assert float(semantic_loss(scores, target)) == pytest.approx(expected, abs=1e-4)
    assert float(semantic_loss(scores, torch.full((4, 4), 255))) == 0.0


def semantic_sample(index, gt, condition=None):
    gt = torch.as_tensor(gt)
    meta = {"condition": condition} if condition else {}
    return Sample(index=index, image=np.zeros((*gt.shape, 3), np.uint8), semantic=gt, meta=meta)


def test_confusion_iou_and_evaluator_by_hand():
    gt = np.array([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 0], [1, 0, 2, 0]])
    matrix = confusion(gt, pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 1]]
    ious = iou_from_confusion(matrix)
    np.testing.assert_allclose(ious, [1 / 4, 2 / 4, 1 / 2])  # class 1: tp 2, gt 3, predicted 3
    evaluator = SemanticEvaluator(class_names=["a", "b", "c"])
    samples = [semantic_sample(0, gt, "fog"), semantic_sample(1, gt, "night")]
    predictions = [Prediction(index=0, semantic=torch.as_tensor(pred)), Prediction(index=1, semantic=torch.as_tensor(gt).clamp(max=2))]
    evaluator.process(Batch(samples), predictions)
    m = evaluator.compute()
    both = matrix + confusion(gt, np.clip(gt, 0, 2), 3)
    assert m["mIoU"] == pytest.approx(np.mean(iou_from_confusion(both)) * 100)
    assert m["per_class"]["a"] == pytest.approx(iou_from_confusion(both)[0] * 100)
    assert m["per_condition"]["fog"] == pytest.approx(np.mean(ious) * 100)
    assert m["per_condition"]["night"] == pytest.approx(100.0)
    assert m["mIoU_condition_mean"] == pytest.approx((np.mean(ious) * 100 + 100) / 2)
    assert m["num_pixels"] == 14


def test_classes_absent_everywhere_are_left_out_of_the_mean():
    evaluator = SemanticEvaluator(class_names=["a", "b", "c"])
    evaluator.process(Batch([semantic_sample(0, [[0, 1]])]), [Prediction(index=0, semantic=torch.tensor([[0, 1]]))])
    m = evaluator.compute()
    assert m["mIoU"] == 100.0 and m["per_class"]["c"] is None


def build(name: str, **kwargs):
    torch.manual_seed(0)
    return METHODS.get(name)(sam=SamBackbone(**TINY_SAM), class_names=CLASSES, clip=CLIP, grid=3, flip=0.0, **kwargs)


def batch() -> Batch:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)
    labels = torch.zeros(64, 128, dtype=torch.long)
    labels[:, 64:] = 1
    labels[:8] = 255
    return Batch([Sample(index=0, image=image, semantic=labels)])


def count_calls(module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *args: calls.__setitem__(0, calls[0] + 1) or None)
    return calls


@pytest.mark.parametrize("name, learnt", [
    ("ssprompt", {"spatial.learned", "spatial.weight_logits", "semantic.learned", "semantic.weight_logits"}),
    ("spaprompt", {"spatial.learned", "spatial.weight_logits"}),
    ("semprompt", {"semantic.learned", "semantic.weight_logits"}),
    ("coop", {"coop.context"}),
])
@pytest.mark.slow
def test_training_lowers_the_loss_and_moves_only_prompt_parameters(name, learnt):
    model = build(name)
    assert set(model.trainable_parameters()) == learnt
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not any(k.startswith(p.split(".")[0]) for p in learnt)}
    prompt_encoder_calls = count_calls(model.sam._raw_sam().prompt_encoder)
    text_encoder_calls = count_calls(model.clip.clip.transformer)
    optimizer = torch.optim.Adam(list(model.trainable_parameters().values()), lr=0.05)
    losses = []
    for _ in range(4):
        loss = model.training_step(batch())["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert prompt_encoder_calls[0] == 0  # default spatial prompts were computed once, at construction
    assert text_encoder_calls[0] == (4 if name == "coop" else 0)  # CoOp runs the text encoder every step
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key


def test_zero_shot_has_nothing_to_train_and_predicts_labels():
    model = build("zero_shot_prompts")
    assert model.trainable_parameters() == {}
    prediction = model.predict(batch())[0]
    assert prediction.semantic.shape == (64, 128) and prediction.semantic.max() < len(CLASSES)


def test_missing_class_names_is_a_config_error():
    with pytest.raises(ConfigError, match="class names"):
        METHODS.get("ssprompt")(sam=SamBackbone(**TINY_SAM), clip=CLIP, grid=3)


def test_clip_dense_features_match_open_clip_tokens_and_weights_load(tmp_path):
    clip = ClipBackbone(model="tiny", allow_random_init=True, dense_size=224)
    pixels = torch.randn(1, 3, 224, 224)
    clip.clip.visual.output_tokens = True
    _, tokens = clip.clip.visual(pixels)
    expected = torch.nn.functional.normalize(tokens @ clip.clip.visual.proj, dim=-1)
    torch.testing.assert_close(clip.dense_from_pixels(pixels).flatten(2).transpose(1, 2), expected)
    tokens = clip.tokenize(["a photo of a car."])
    torch.testing.assert_close(clip.encode_token_embeddings(clip.clip.token_embedding(tokens), tokens),
                               clip.encode_text(["a photo of a car."]))
    save_file({k: v.contiguous() for k, v in clip.clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    torch.save({f"module.{k}": v for k, v in clip.clip.state_dict().items()}, tmp_path / "clip.bin")
    for name in ("clip.safetensors", "clip.bin"):
        loaded = ClipBackbone(model="tiny", checkpoint=str(tmp_path / name), init_seed=1)
        torch.testing.assert_close(loaded.encode_text(["road"]), clip.encode_text(["road"]))
    with pytest.raises(CheckpointError, match="not found"):
        ClipBackbone(model="tiny", checkpoint=str(tmp_path / "missing.bin"))
    torch.save({"nope": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="does not fit"):
        ClipBackbone(model="tiny", checkpoint=str(tmp_path / "other.bin"))
    with pytest.raises(CheckpointError, match="checkpoint is not set"):
        ClipBackbone(model="ViT-B-16")
