"""Open-Vocabulary SAM's SAM + CLIP baselines (image_crop, feature_crop, ± CoOp) on a tiny SAM, tiny
CLIPs and a synthetic COCO in the real layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sambench.testing import TINY_SAM

from sambench.backbones.clip import CLIP_MEAN, CLIP_STD, ClipBackbone
from sambench.backbones.sam import SamBackbone
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.errors import ConfigError
from sambench.evaluation.open_vocab import OpenVocabEvaluator
from sambench_plugins.methods.ovsam.region_crops import mask_crops, mask_weights, pool_in_masks
from sambench.backbones.clip_context import CoOpContext
from sambench.registry import DATASETS, METHODS, load_plugins
from sambench.structures import Batch

load_plugins()
RN = {"model": "tiny_rn", "allow_random_init": True, "dense_size": 128}
VIT = {"model": "tiny", "allow_random_init": True, "dense_size": 224}


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = write_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=3)
    return {split: DATASETS.get("coco_ov")(split=split, root=str(root)) for split in ("train", "eval")}


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return SamBackbone(**TINY_SAM)


@pytest.fixture(scope="module")
def build(sam, tmp_path_factory):
    """Method builder on the module's tiny SAM and one shared cache (the 65-class ViLD text
    embeddings are computed once per CLIP)."""
    cache = str(tmp_path_factory.mktemp("cache"))

    def make(name: str, clip=RN, **kwargs):
        torch.manual_seed(0)
        return METHODS.get(name)(sam=sam, clip=clip, cache_dir=cache, **kwargs)

    return make


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


# ----- parts ------------------------------------------------------------------------------------
def test_resnet_dense_features_are_the_attnpool_value_path():
    clip = ClipBackbone(model="tiny_rn", allow_random_init=True, dense_size=128)
    pool = clip.clip.visual.attnpool
    with torch.no_grad():
        pool.positional_embedding.zero_()
        # A spatially constant layer4 map: attention then averages equal values, so attnpool's
        # output is the value path of that vector, which every location of the dense map holds.
        constant = torch.randn(1, 256, 1, 1).expand(1, 256, 2, 2)
        dense = clip.attnpool_values(constant)
        expected = F.normalize(pool(constant), dim=-1)[0]
    assert dense.shape == (1, 64, 2, 2)
    torch.testing.assert_close(dense[0].flatten(1).T, expected.expand(4, -1))
    features = clip.resnet_dense_features([np.zeros((48, 64, 3), np.uint8)])
    assert features.shape == (1, 64, 4, 4)  # letterbox 128², stride 32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(1, 4, 4))
    with pytest.raises(ConfigError, match="ResNet"):
        ClipBackbone(**VIT).resnet_dense_features([np.zeros((8, 8, 3), np.uint8)])


def test_pool_in_masks_is_the_masked_mean():
    features = torch.randn(8, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 0:3] = True
    masks[1, 3, 3] = True
    pooled = pool_in_masks(features, masks.float())
    for k in range(2):
        torch.testing.assert_close(pooled[k], features[:, masks[k]].mean(dim=1))
    constant = torch.randn(8, 1, 1).expand(8, 3, 3)  # resized to the 16² mask frame: still constant
    torch.testing.assert_close(pool_in_masks(constant, masks.float().repeat_interleave(4, 1).repeat_interleave(4, 2)),
                               constant[:, 0, 0].expand(2, -1))
    logits = torch.full((2, 4, 4), -3.0)
    logits[0, 0, 0] = 2.0
    weights = mask_weights(logits)
    assert weights[0].sum() == 1 and torch.allclose(weights[1], torch.sigmoid(logits[1]))  # empty mask: soft weights


def test_mask_crops_are_the_box_crops():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 3:11, 5:13] = torch.ones(8, 8).tril().bool()  # a triangle, box rows 3..10, cols 5..12
    pixels = torch.as_tensor(image).permute(2, 0, 1).float() / 255
    crops = mask_crops(image, masks, size=8)
    torch.testing.assert_close(crops[0], normalised(pixels[:, 3:11, 5:13]))  # same size: no resampling
    whole = F.interpolate(pixels[None], size=(8, 8), mode="bicubic", align_corners=False, antialias=True)[0].clamp(0, 1)
    torch.testing.assert_close(crops[1], normalised(whole))  # empty mask: the whole image
    greyed = mask_crops(image, masks, size=8, mask_background=True)
    inside = masks[0, 3:11, 5:13]
    torch.testing.assert_close(greyed[0][:, inside], crops[0][:, inside])
    assert greyed[0][:, ~inside].abs().max() < 1e-6  # CLIP's mean colour normalises to 0


def test_coop_context_is_shared_across_vocabularies():
    clip = ClipBackbone(**VIT)
    coop = CoOpContext(clip, num_context=4)
    base, everything = coop.encode(clip, ["person", "car"]), coop.encode(clip, ["person", "cat", "car"])
    torch.testing.assert_close(base, everything[[0, 2]])
    with pytest.raises(ValueError, match="without class names"):
        coop(clip)
    fixed = CoOpContext(clip, ["person", "car"], num_context=4)
    fixed.context = coop.context
    torch.testing.assert_close(fixed(clip), base)


# ----- methods ----------------------------------------------------------------------------------
def test_box_masks_are_sams_and_clip_sees_the_crop_of_each_mask_box(coco, sam, build):
    model = build("image_crop")
    sample = coco["eval"][0]
    seen = []
    model.clip.clip.visual.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    prediction = model.predict(Batch([sample]))[0]
    logits, _, _ = sam.predict(sam.embed_images([sample.image]), sample.size, boxes=sample.boxes)
    assert torch.equal(prediction.masks, logits[:, 0] > 0)
    pixels = torch.as_tensor(sample.image).permute(2, 0, 1).float() / 255
    for k, mask in enumerate(prediction.masks):
        ys, xs = np.nonzero(mask.numpy())
        box = pixels[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1] if len(ys) else pixels
        crop = F.interpolate(box[None], size=(64, 64), mode="bicubic", align_corners=False, antialias=True)[0]
        torch.testing.assert_close(seen[0][k], normalised(crop.clamp(0, 1)))


def test_feature_crop_pools_clip_features_inside_sams_low_res_mask(coco, sam, build):
    model = build("feature_crop")
    sample = coco["eval"][1]
    _, _, low_res = sam.predict(sam.embed_images([sample.image]), sample.size, boxes=sample.boxes)
    features = model.clip.resnet_dense_from_pixels(model.clip.preprocess(sample.image))[0]
    upsampled = F.interpolate(features[None], size=(256, 256), mode="bilinear", align_corners=False)[0]
    regions = model.region_embeddings(sample, None, low_res[:, 0])
    for k, logits in enumerate(low_res[:, 0]):
        torch.testing.assert_close(regions[k], upsampled[:, logits > 0].mean(dim=1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, clip, prompt", [("image_crop", RN, "point"), ("feature_crop", RN, "box"),
                                                ("feature_crop", VIT, "point"), ("image_crop", VIT, "box")])
def test_labels_are_vocabulary_classes_and_the_evaluator_scores_them(coco, build, name, clip, prompt):
    model = build(name, clip=clip, prompt=prompt)
    assert model.trainable_parameters() == {}
    with pytest.raises(NotImplementedError, match="training-free"):
        model.training_step(Batch([coco["train"][0]]))
    batch = Batch([coco["eval"][i] for i in range(len(coco["eval"]))])
    predictions = model.predict(batch)
    evaluator = OpenVocabEvaluator.from_meta(coco["eval"].dataset_meta)
    evaluator.process(batch, predictions)
    metrics = evaluator.compute()
    for sample, prediction in zip(batch, predictions):
        n = sample.num_instances
        assert prediction.masks.shape == sample.masks.shape and prediction.class_ids.dtype == torch.long
        assert ((prediction.class_ids >= 0) & (prediction.class_ids < 65)).all()
        assert ((prediction.scores > 0) & (prediction.scores <= 1)).all() and len(prediction.scores) == n
    assert metrics["num_instances"] == sum(s.num_instances for s in batch) and metrics["Acc"] is not None


def test_label_is_a_real_class_even_when_background_scores_highest(build):
    model = build("feature_crop")
    regions = F.normalize(torch.randn(3, 64), dim=-1)
    model.text_bank = lambda names, synonym_lists=None: -regions[:1, None].expand(len(names), 1, -1)  # every cosine ~ -1 for region 0
    labels, scores = model.classify(regions, ["person", "car"])
    assert labels.shape == (3,) and ((labels >= 0) & (labels < 2)).all()
    assert scores[0] < 1e-6  # background took the probability; the label is still a class


@pytest.mark.parametrize("name", ["image_crop", "feature_crop"])
def test_coop_trains_only_the_context_and_switches_vocabulary(coco, build, name):
    model = build(name, coop=True, num_context=4)
    assert set(model.trainable_parameters()) == {"coop.context"}
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k != "coop.context"}
    model.train()
    batch = Batch([coco["train"][i] for i in range(2)])
    assert len(batch[0].class_names) == 48
    optimizer = torch.optim.Adam([model.coop.context], lr=0.05)
    losses = []
    for _ in range(3):
        loss = model.training_step(batch)["loss_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key  # SAM, CLIP weights and BatchNorm statistics
    model.eval()
    sample = coco["eval"][0]
    assert len(sample.class_names) == 65
    prediction = model.predict(Batch([sample]))[0]
    assert (prediction.class_ids < 65).all()
    with torch.no_grad():  # one context: a class's embedding does not depend on the vocabulary around it
        train_text = model.class_embeddings(batch[0].class_names)
        eval_text = model.class_embeddings(sample.class_names)
    torch.testing.assert_close(train_text[0], eval_text[sample.class_names.index(batch[0].class_names[0])])


def test_detections_become_coco_results_with_ap(coco, build, tmp_path):
    data = coco["eval"]
    results = []
    for i in range(len(data)):
        sample = data[i]
        for x1, y1, x2, y2 in sample.boxes.tolist():
            results.append({"image_id": sample.meta["image_id"], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 0.9})
    results.append({"image_id": data[0].meta["image_id"], "bbox": [0, 0, 5, 5], "score": 0.01})  # under the threshold
    (tmp_path / "dets.json").write_text(json.dumps(results))
    model = build("feature_crop", prompt="detections", detections=str(tmp_path / "dets.json"), score_threshold=0.05)
    batch = Batch([data[i] for i in range(len(data))])
    predictions = model.predict(batch)
    for sample, prediction in zip(batch, predictions):
        assert prediction.masks is None and len(prediction.detections) == sample.num_instances
        for det in prediction.detections:
            assert det.mask.shape == sample.size and 0 <= det.class_id < 65 and 0 < det.score <= 0.9
    evaluator = OpenVocabEvaluator.from_meta(data.dataset_meta, output_dir=str(tmp_path / "run"))
    evaluator.process(batch, predictions)
    metrics = evaluator.compute()
    assert metrics["num_detections"] == len(results) - 1 and "AP" in metrics and "AP50" in metrics
    assert (tmp_path / "run" / "detections.json").is_file()


def test_bad_options_are_config_errors(build):
    with pytest.raises(ConfigError, match="unknown method.prompt 'mask'"):
        build("image_crop", prompt="mask")
    with pytest.raises(ConfigError, match="needs method.detections"):
        build("feature_crop", prompt="detections")
    with pytest.raises(ConfigError, match="file not found"):
        build("feature_crop", prompt="detections", detections="/nonexistent/dets.json")
