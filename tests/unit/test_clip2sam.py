"""CLIP2SAM (Open-Vocabulary SAM stage 2) and OV-SAM inference on a tiny SAM and a tiny ResNet CLIP,
with the synthetic COCO in the real layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench.backbones.sam_extensions import run_single_mask_decoder
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.checkpoint import save_atomic
from sambench.errors import CheckpointError, ConfigError
from sambench.evaluation.open_vocab import OpenVocabEvaluator
from sambench_plugins.methods.ovsam.augment import large_scale_jitter
from sambench_plugins.methods.ovsam.classifier import clip_valid
from sambench_plugins.methods.ovsam.prompting import DetectionBoxes, num_box_prompts, random_foreground_points, training_prompt_indices
from sambench.prompts import mask_boxes
from sambench.registry import DATASETS, METHODS, load_plugins
from sambench.structures import collate

load_plugins()
CLIP = {"model": "tiny_rn", "allow_random_init": True}
SMALL = dict(clip=CLIP, adapter={"depth": 1, "num_heads": 2}, allow_untrained=True, num_prompts=6, num_points=400)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = write_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=4)
    return root, DATASETS.get("coco_ov")(split="train", root=str(root)), DATASETS.get("coco_ov")(split="eval", root=str(root))


def build(name: str = "clip2sam", **kwargs):
    torch.manual_seed(0)
    return METHODS.get(name)(sam=SamBackbone(**TINY_SAM), **{**SMALL, **kwargs})


def state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_trainable_parts_and_the_dropped_encoder():
    model = build()
    names = set(model.trainable_parameters())
    assert names and all(n.split(".")[0] in ("sam", "label", "fpn", "region") for n in names)
    assert all(n.startswith("sam.sam.mask_decoder.") for n in names if n.startswith("sam."))
    assert not any("iou_prediction_head" in n or "iou_token" in n or "output_hypernetworks_mlps.1" in n for n in names)
    assert "label.token.weight" in names and "fpn.lateral_convs.0.weight" in names and "region.proj.weight" in names
    assert not any(p.requires_grad for p in model.adapter.parameters())
    assert not any(p.requires_grad for p in model.clip.parameters())
    with pytest.raises(RuntimeError, match="image encoder was dropped"):
        model.sam.encode(torch.zeros(1, 3, 1024, 1024))


def test_label_token_decoder_is_sams_decoder_with_two_output_tokens():
    model = build()
    decoder = model.sam._raw_sam().mask_decoder
    sparse, dense = model.prompt_embeddings(boxes=torch.tensor([[10.0, 20.0, 300.0, 400.0]]))
    embedding = torch.randn(1, 256, 64, 64)
    masks, token_out = model.decode(embedding, sparse, dense)
    assert masks.shape == (1, 1, 256, 256) and token_out.shape == (1, 256)
    # the same computation by hand with upstream modules: tokens [label, mask_0] + prompts
    tokens = torch.cat([model.label.token.weight, decoder.mask_tokens.weight[:1]])[None]
    tokens = torch.cat([tokens, sparse], dim=1)
    hs, src = decoder.transformer(embedding + dense, model.sam._raw_sam().prompt_encoder.get_dense_pe(), tokens)
    up = decoder.output_upscaling(src.transpose(1, 2).view(1, 256, 64, 64))
    expected = (decoder.output_hypernetworks_mlps[0](hs[:, 1]) @ up.flatten(2)).view(1, 1, 256, 256)
    assert torch.allclose(masks, expected, atol=1e-5) and torch.allclose(token_out, hs[:, 0], atol=1e-6)
    again, _ = run_single_mask_decoder(decoder, model.label.token.weight, embedding,
                                       model.sam._raw_sam().prompt_encoder.get_dense_pe(), sparse, dense)
    assert torch.equal(again, masks)


@pytest.mark.parametrize("mode, depends_on_label", [("zero", False), ("add", True), ("only", True)])
def test_label_token_modes(mode, depends_on_label):
    model = build(label_token=mode)
    fpn = [torch.randn(1, 256, s, s) for s in (256, 128, 64, 32)]
    rois = torch.tensor([[0.0, 10.0, 10.0, 200.0, 300.0]])
    token_out, text = torch.randn(1, 256, requires_grad=True), torch.randn(3, 2, model.clip.embed_dim)
    before = model.class_logits(fpn, rois, token_out, text)
    assert before.shape == (1, 4) and before[0, -1] == 0  # background prototype of zeros
    before.sum().backward()
    assert model.label.mlp.layers[0].weight.grad is not None  # connected even when multiplied by 0
    with torch.no_grad():
        model.label.mlp.layers[-1].bias.add_(1.0)
    changed = not torch.allclose(before, model.class_logits(fpn, rois, token_out, text))
    assert changed == depends_on_label


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="method.prompt"):
        build(prompt="mask")
    with pytest.raises(ConfigError, match="method.detections"):
        build(prompt="detections")
    with pytest.raises(ConfigError, match="clip_box_frame"):
        build(clip_box_frame="screen")
    with pytest.raises(CheckpointError, match="method=sam2clip"):
        build(allow_untrained=False)


@pytest.mark.slow
def test_one_training_step_lowers_the_loss_and_moves_only_stage_two(coco):
    _, train, _ = coco
    model = build(flip=0.0, scale_range=(1.0, 1.0))
    batch = collate([train[0], train[1]])
    frozen = {"clip": state(model.clip), "adapter": state(model.adapter), "prompt": state(model.sam._raw_sam().prompt_encoder)}
    params = model.trainable_parameters()
    optimizer = torch.optim.AdamW(list(params.values()), lr=1e-3)
    model.train()  # as the engine does: the frozen CLIP ResNet must stay in eval mode (BatchNorm)
    assert model.fpn.training and not model.clip.clip.visual.training

    def loss() -> torch.Tensor:
        torch.manual_seed(1)  # the same prompts and sampled points each time
        terms = model.training_step(batch)
        assert set(terms) == {"loss_cls", "loss_mask_bce", "loss_mask_dice"}
        return sum(terms.values())

    first = loss()
    optimizer.zero_grad()
    first.backward()
    assert all(p.grad is not None for p in params.values())
    optimizer.step()
    with torch.no_grad():
        assert float(loss()) < float(first)
    for name, saved in frozen.items():
        module = {"clip": model.clip, "adapter": model.adapter, "prompt": model.sam._raw_sam().prompt_encoder}[name]
        assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items()), name


def test_training_uses_the_split_vocabulary_and_base_labels(coco):
    _, train, _ = coco
    model = build()
    calls = []
    original = model.class_logits

    def spy(fpn, rois, token_out, text):
        calls.append((rois.shape[0], text.shape[0]))
        return original(fpn, rois, token_out, text)

    model.class_logits = spy
    model.training_step(collate([train[0]]))
    assert calls == [(6, 48)]  # num_prompts RoIs against the 48 base classes


def test_large_scale_jitter_keeps_image_and_masks_aligned():
    image = np.zeros((60, 80, 3), np.uint8)
    image[10:30, 20:50] = 255
    masks = torch.zeros(2, 60, 80, dtype=torch.bool)
    masks[0, 10:30, 20:50] = True
    masks[1, 0:2, 0:2] = True  # 4 px: becomes < min area only at small scales
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        out, kept, keep = large_scale_jitter(image, masks, size=128, scale_range=(0.9, 2.0), flip=0.5, min_mask_area=32, generator=g)
        assert out.shape[0] == 3 and max(out.shape[1:]) <= 128 and kept.shape[1:] == out.shape[1:]
        assert keep.tolist()[0] == 0
        white = out[0] > 200
        inside = kept[0]
        assert (white & inside).sum() >= 0.9 * inside.sum() and (white & ~inside).sum() <= 0.1 * inside.sum() + 20
    out, kept, keep = large_scale_jitter(image, masks, size=80, scale_range=(0.5, 0.5), flip=1.0, min_mask_area=32)
    assert tuple(out.shape[1:]) == (30, 40) and keep.tolist() == [0]  # the 1-px corner was dropped
    assert torch.equal(out, out.flip(-1).flip(-1)) and bool(kept[0, 5:15, 40 - 25 : 40 - 10].all())


def test_training_prompts():
    assert training_prompt_indices(3, 8).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert training_prompt_indices(50, 40).tolist() == list(range(40))
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 5:8, 10:12] = True
    points = random_foreground_points(masks, torch.Generator().manual_seed(0))
    x, y = points[0].tolist()
    # integer pixel indices, as the official code (SAM's prompt encoder adds the half-pixel shift)
    assert x in (10.0, 11.0) and y in (5.0, 6.0, 7.0) and points[1].tolist() == [15.0, 10.0]
    assert [num_box_prompts(n) for n in (1, 2, 3, 40)] == [1, 2, 2, 21]  # official: 21 boxes + 19 points of 40


def test_mask_boxes_vectorised():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 11] = True
    assert mask_boxes(masks).tolist() == [[3, 2, 9, 5], [11, 9, 12, 10], [0, 0, 0, 0]]
    assert mask_boxes(torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0, 4)


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["box", "point"])
def test_predict_gives_one_labelled_mask_per_instance(coco, prompt):
    _, _, evaluation = coco
    model = build("ovsam", prompt=prompt)
    batch = collate([evaluation[0], evaluation[1]])
    predictions = model.predict(batch)
    for sample, pred in zip(batch, predictions):
        assert pred.masks.shape == sample.masks.shape and pred.masks.dtype == torch.bool
        assert pred.class_ids.shape == (sample.num_instances,)
        assert 0 <= int(pred.class_ids.min()) and int(pred.class_ids.max()) < 65
        assert ((pred.scores > 0) & (pred.scores <= 1)).all()
    evaluator = OpenVocabEvaluator.from_meta(evaluation.dataset_meta)
    evaluator.process(batch, predictions)
    metrics = evaluator.compute()
    assert metrics["num_instances"] == sum(s.num_instances for s in batch) and 0 <= metrics["Acc"] <= 100


@pytest.mark.slow
def test_ensemble_uses_the_novel_flags_and_the_clip_branch(coco):
    _, _, evaluation = coco
    sample = evaluation[0]
    model = build("ovsam")
    q = torch.randn(4, 66)
    text = model.texts(sample.class_names)
    layer4 = torch.randn(1, model.clip.clip.visual.attnpool.c_proj.in_features, 32, 32)
    rois = torch.tensor([[0.0, 0, 0, 500, 400]] * 4)
    c = model.clip_logits(layer4, rois, text)
    novel = torch.tensor(sample.meta["novel"])
    labels, scores = model._labels(q, layer4, rois, text, sample)
    qs, cs = q.softmax(-1)[:, :-1], c.softmax(-1)[:, :-1]
    w = torch.where(novel, 0.9, 0.1)
    expected = qs.pow(1 - w) * cs.pow(w)
    assert torch.equal(labels, expected.argmax(-1)) and torch.allclose(scores, expected.amax(-1))
    model.ensemble = False
    labels, _ = model._labels(q, layer4, rois, text, sample)
    assert torch.equal(labels, q[:, :-1].argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("frame", ["input", "original"])
def test_clip_branch_pools_the_gt_boxes_in_the_chosen_frame(coco, frame):
    """Official: the frozen-CLIP branch pools each instance's GT box (also with point prompts);
    ``original`` leaves them in image pixels as the official code, ``input`` scales them (×1024/long side)."""
    _, _, evaluation = coco
    sample = evaluation[0]
    model = build("ovsam", prompt="point", clip_box_frame=frame)
    seen = []
    model.clip_logits = lambda layer4, rois, text: seen.append(rois.clone()) or torch.zeros(len(rois), len(text) + 1)
    model.predict(collate([sample]))
    gt = sample.boxes.float()
    h, w = sample.size
    nh, nw = model.sam.input_size(sample.size)
    expected = gt if frame == "original" else gt * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    assert torch.allclose(seen[0][:, 1:], expected, atol=1e-4) and torch.equal(seen[0][:, 0], torch.zeros(len(gt)))
    model.clip_rois = "mask_box"  # the alternative: the predicted masks' boxes, as the RoI branch
    model.predict(collate([sample]))
    assert not torch.allclose(seen[1][:, 1:], expected, atol=1.0)


def test_ensemble_falls_back_to_q_where_the_mask_misses_the_clip_grid(coco):
    """Official ``valid_masking``: α = β = 0 for a mask with no positive logit on the 32² CLIP grid."""
    _, _, evaluation = coco
    sample = evaluation[0]
    model = build("ovsam")
    q, c = torch.randn(2, 66), torch.randn(2, 66)
    model.clip_logits = lambda layer4, rois, text: c
    low_res = torch.full((2, 1, 256, 256), -5.0)
    low_res[0, 0, 100:140, 100:140] = 5.0
    valid = clip_valid(low_res, torch.zeros(1, 8, 32, 32))
    assert valid.tolist() == [True, False]
    labels, scores = model._labels(q, None, torch.zeros(2, 5), None, sample, valid)
    w = torch.where(torch.tensor(sample.meta["novel"]), 0.9, 0.1)
    qs, cs = q.softmax(-1)[:, :-1], c.softmax(-1)[:, :-1]
    assert torch.allclose(scores[0], (qs[0] ** (1 - w) * cs[0] ** w).max())
    assert torch.allclose(scores[1], qs[1].max()) and int(labels[1]) == int(qs[1].argmax())


@pytest.mark.slow
def test_detections_prompts_give_mask_ap(coco, tmp_path):
    root, _, evaluation = coco
    gt = json.loads((root / "annotations/instances_val2017.json").read_text())
    results = [{"image_id": a["image_id"], "bbox": a["bbox"], "score": 0.9, "category_id": 1} for a in gt["annotations"]]
    results.append({"image_id": gt["images"][0]["id"], "bbox": [0, 0, 5, 5], "score": 0.01, "category_id": 1})
    file = tmp_path / "dets.json"
    file.write_text(json.dumps(results))
    boxes = DetectionBoxes(str(file), score_threshold=0.05)
    assert len(boxes(gt["images"][0]["id"])[0]) == sum(a["image_id"] == gt["images"][0]["id"] for a in gt["annotations"])
    model = build("ovsam", prompt="detections", detections=str(file), score_threshold=0.05)
    batch = collate([evaluation[i] for i in range(len(evaluation))])
    predictions = model.predict(batch)
    assert all(p.masks is None and p.detections for p in predictions)
    det = predictions[0].detections[0]
    assert det.mask.shape == batch[0].size and 0 < det.score <= 0.9 and len(det.bbox) == 4
    evaluator = OpenVocabEvaluator.from_meta(evaluation.dataset_meta, output_dir=str(tmp_path / "out"))
    evaluator.process(batch, predictions)
    metrics = evaluator.compute()
    assert metrics["num_detections"] == len(results) - 1 and 0 <= metrics["AP"] <= 100
    assert (tmp_path / "out" / "detections.json").is_file()


def test_stage_checkpoints_load_and_mismatches_are_named(tmp_path):
    donor = build()
    with torch.no_grad():
        for p in donor.adapter.parameters():
            p.add_(0.5)
    stage1 = {f"adapter.{k}": v for k, v in donor.adapter.state_dict().items() if k != "pos_embed"}
    save_atomic({"trainable": stage1, "step": 1}, tmp_path / "s1" / "checkpoints" / "last.pt")
    with torch.no_grad():
        for p in donor.trainable_parameters().values():
            p.add_(0.25)
    stage2 = {k: v.detach().clone() for k, v in donor.trainable_parameters().items()}
    save_atomic({"trainable": stage2, "ema": {"shadow": stage2}, "step": 2}, tmp_path / "s2.pt")
    model = build("ovsam", sam2clip_checkpoint=str(tmp_path / "s1"), clip2sam_checkpoint=str(tmp_path / "s2.pt"),
                  allow_untrained=False)
    assert all(torch.equal(v, donor.adapter.state_dict()[k]) for k, v in model.adapter.state_dict().items())
    assert all(torch.equal(p, stage2[k]) for k, p in model.trainable_parameters().items())
    stage1.pop("adapter.neck.0.weight")
    stage1["adapter.extra"] = torch.zeros(1)
    save_atomic({"trainable": stage1, "step": 1}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing \['neck.0.weight'\], unexpected \['extra'\]"):
        build("ovsam", sam2clip_checkpoint=str(tmp_path / "bad.pt"))
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nothing.pt"):
        build("ovsam", sam2clip_checkpoint=str(tmp_path / "nothing.pt"))
