"""SamHqBackbone against the official ``segment_anything_hq`` (its SamPredictor, mask decoder and
image encoder on the same model object), its extension points, cache, checkpoints, the timm
registry guard and one end-to-end evaluation. Uses a tiny, randomly initialised HQ-SAM (1024²
input, full-size prompt encoder and HQ decoder)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from sambench import REPO_ROOT
from sambench.backbones.interface import (HIGH_RES_FEATURES, TOKEN_INJECTION, VIT_ENCODER, EncoderSpec,
                                          ImageFeatures)
from sambench.backbones.registry import backbone_class, backbone_configs, capabilities_of
from sambench.backbones.sam_extensions import default_transformer_fn
from sambench.backbones.sam_hq import VIT_EARLY, SamHqBackbone
from sambench.backbones.sam_hq_build import HQ_PARTS, import_sam_hq
from sambench.errors import CheckpointError, ConfigError
from sambench.testing import TINY_SAM, run_job

#: SamHqBackbone keyword arguments of conf/backbone/sam_hq_tiny.yaml
TINY_HQ = dict(name="sam_hq_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
               encoder_global_attn_indexes=[1], allow_random_init=True)
SHAPES = [(117, 171), (171, 117)]  # odd sizes, landscape and portrait: padding on different sides
PROMPTS = {
    "box": dict(box=[20.0, 30.0, 90.0, 100.0]),
    "points_pos_neg": dict(points=[[40.0, 50.0], [100.0, 90.0]], labels=[1, 0]),
    "box_point": dict(box=[10.0, 15.0, 70.0, 110.0], points=[[45.0, 60.0]], labels=[1]),
}


def make_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    blob = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2)[..., None] * 90.0
    return np.clip(base + blob + rng.integers(0, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)


def best(values: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """The max-IoU one of N×3 outputs -> N×1 (what upstream's multimask output keeps)."""
    index = iou.argmax(dim=1)
    return values[torch.arange(len(values)), index].unsqueeze(1)


@pytest.fixture(scope="module")
def backbone() -> SamHqBackbone:
    return SamHqBackbone(**TINY_HQ, cache_dir=None)


@pytest.fixture(scope="module")
def hq_token_backbone(backbone) -> SamHqBackbone:
    other = SamHqBackbone(**TINY_HQ, hq_token_only=True)
    other.load_state_dict(backbone.state_dict())
    return other


class _Scene:
    def __init__(self, backbone: SamHqBackbone, shape: tuple[int, int]):
        self.shape = shape
        self.image = make_image(shape, seed=shape[0] * 1000 + shape[1])
        self.features = backbone.embed_images([self.image])
        self.predictor = import_sam_hq().SamPredictor(backbone._raw_sam())
        self.predictor.set_image(self.image)


@pytest.fixture(scope="module")
def scenes(backbone):
    cache: dict[tuple[int, int], _Scene] = {}

    def get(shape):
        if shape not in cache:
            cache[shape] = _Scene(backbone, shape)
        return cache[shape]

    return get


def ours(backbone, scene, prompt, multimask, mask_inputs=None):
    points = torch.tensor([prompt["points"]]) if "points" in prompt else None
    labels = torch.tensor([prompt["labels"]]) if "points" in prompt else None
    boxes = torch.tensor([prompt["box"]]) if "box" in prompt else None
    with torch.no_grad():
        return backbone.predict(scene.features, scene.shape, points=points, point_labels=labels, boxes=boxes,
                                mask_inputs=mask_inputs, multimask_output=multimask, float64_coords=True)


def upstream(scene, prompt, multimask, hq_token_only, mask_input=None):
    masks, iou, low = scene.predictor.predict(
        point_coords=np.array(prompt["points"], dtype=np.float32) if "points" in prompt else None,
        point_labels=np.array(prompt["labels"]) if "points" in prompt else None,
        box=np.array(prompt["box"], dtype=np.float32) if "box" in prompt else None,
        mask_input=mask_input, multimask_output=multimask, return_logits=True, hq_token_only=hq_token_only)
    return torch.from_numpy(masks)[None], torch.from_numpy(iou)[None], torch.from_numpy(low)[None]


# ----- parity with segment_anything_hq.SamPredictor -------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_features_equal_predictor_features(backbone, scenes, shape):
    scene = scenes(shape)
    assert scene.features.embedding.shape == (1, 256, 64, 64)
    assert scene.features.levels[VIT_EARLY].shape == (1, 32, 64, 64)  # channels first
    assert torch.equal(scene.features.embedding, scene.predictor.features)
    assert torch.equal(scene.features.levels[VIT_EARLY], scene.predictor.interm_features[0].permute(0, 3, 1, 2))
    assert scene.predictor.input_size == backbone.input_size(shape)


@pytest.mark.parametrize("hq_token_only", [False, True], ids=["sam+hq", "hq_only"])
@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_predict_matches_hq_sam_predictor(backbone, hq_token_backbone, scenes, shape, prompt_name, multimask,
                                          hq_token_only):
    """Difference 0: same prompt scaling (float64), same decoder arithmetic, same post-processing."""
    scene = scenes(shape)
    model = hq_token_backbone if hq_token_only else backbone
    logits, iou, low_res = ours(model, scene, PROMPTS[prompt_name], multimask)
    up_masks, up_iou, up_low = upstream(scene, PROMPTS[prompt_name], multimask, hq_token_only)
    m = 3 if multimask else 1
    assert logits.shape == (1, m, *shape) and iou.shape == (1, m) and low_res.shape == (1, m, 256, 256)
    if multimask:
        logits, low_res, iou = best(logits, iou), best(low_res, iou), best(iou, iou)
        if hq_token_only:  # the HQ mask alone, once per SAM multimask output
            all_low = ours(model, scene, PROMPTS[prompt_name], True)[2]
            assert torch.equal(all_low[:, 0], all_low[:, 1]) and torch.equal(all_low[:, 0], all_low[:, 2])
    assert torch.equal(logits, up_masks)
    assert torch.equal(iou, up_iou)
    assert torch.equal(low_res, up_low)
    assert logits.std() > 1e-3  # not degenerate


def test_multimask_outputs_are_sam_masks_plus_the_hq_mask(backbone, hq_token_backbone, scenes):
    scene = scenes(SHAPES[0])
    prompt = PROMPTS["points_pos_neg"]
    sam_hq = ours(backbone, scene, prompt, True)[2]
    hq_only = ours(hq_token_backbone, scene, prompt, True)[2]
    assert not torch.allclose(sam_hq[:, 0], sam_hq[:, 1], atol=1e-3)  # three different masks
    assert not torch.allclose(sam_hq[:, 0], hq_only[:, 0], atol=1e-3)  # the sum is not the HQ mask


def test_mask_input_matches_hq_sam_predictor(backbone, scenes):
    scene = scenes(SHAPES[1])
    prompt = PROMPTS["box_point"]
    _, _, up_low = upstream(scene, prompt, False, False)
    logits, iou, low = ours(backbone, scene, prompt, True, mask_inputs=up_low)
    up_masks, up_iou, _ = upstream(scene, prompt, True, False, mask_input=up_low[0].numpy())
    assert torch.equal(best(logits, iou), up_masks) and torch.equal(best(iou, iou), up_iou)
    no_mask_logits = ours(backbone, scene, prompt, True)[0]
    assert not torch.allclose(no_mask_logits, logits, atol=1e-3)  # the mask input is used


def test_batched_points_equal_predict_torch(backbone, scenes):
    scene = scenes(SHAPES[0])
    points = torch.tensor([[[40.0, 50.0], [100.0, 90.0]], [[10.0, 10.0], [60.0, 70.0]], [[80.0, 20.0], [30.0, 110.0]]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    with torch.no_grad():
        logits, iou, low = backbone.predict(scene.features, scene.shape, points=points, point_labels=labels,
                                            multimask_output=True)
        coords = scene.predictor.transform.apply_coords_torch(points, scene.shape)
        up_masks, up_iou, up_low = scene.predictor.predict_torch(coords, labels, multimask_output=True,
                                                                 return_logits=True)
    assert logits.shape == (3, 3, *scene.shape)
    assert torch.equal(best(logits, iou), up_masks) and torch.equal(best(iou, iou), up_iou)
    assert torch.equal(best(low, iou), up_low)


# ----- decoder --------------------------------------------------------------------------------
def _prompts(backbone, scene):
    return backbone.encode_prompts(
        scene.shape, points=torch.tensor([[[40.0, 50.0], [100.0, 90.0]], [[10.0, 10.0], [60.0, 70.0]]]),
        point_labels=torch.tensor([[1, 0], [1, 1]]),
        boxes=torch.tensor([[20.0, 30.0, 90.0, 100.0], [0.0, 0.0, 80.0, 80.0]]))


@pytest.mark.parametrize("hq_token_only", [False, True], ids=["sam+hq", "hq_only"])
@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
def test_decode_default_transformer_fn_equals_upstream_decoder(backbone, hq_token_backbone, scenes, multimask,
                                                               hq_token_only):
    scene = scenes(SHAPES[0])
    model = hq_token_backbone if hq_token_only else backbone
    raw = model._raw_sam()
    with torch.no_grad():
        sparse, dense = _prompts(model, scene)
        low, iou = model.decode(scene.features, sparse, dense, multimask, transformer_fn=default_transformer_fn)
        plain_low, plain_iou = model.decode(scene.features, sparse, dense, multimask)
        up_low, up_iou = raw.mask_decoder(
            image_embeddings=scene.predictor.features, image_pe=raw.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
            hq_token_only=hq_token_only, interm_embeddings=scene.predictor.interm_features)
    assert torch.equal(low, plain_low) and torch.equal(iou, plain_iou)
    assert low.shape == (2, 3 if multimask else 1, 256, 256)
    if multimask:
        low, iou = best(low, iou), best(iou, iou)
    assert torch.equal(low, up_low) and torch.equal(iou, up_iou)


def test_transformer_fn_receives_upstream_transformer_and_is_used(backbone, scenes):
    scene = scenes(SHAPES[0])
    seen = []

    def recording(transformer, src, pos_src, tokens):
        seen.append((transformer, src.shape, pos_src.shape, tokens.shape))
        return transformer(src, pos_src, tokens)

    def shifted(transformer, src, pos_src, tokens):
        return transformer(src, pos_src, tokens + 0.5)

    with torch.no_grad():
        sparse, dense = _prompts(backbone, scene)
        ref = backbone.decode(scene.features, sparse, dense, True)
        rec = backbone.decode(scene.features, sparse, dense, True, transformer_fn=recording)
        new = backbone.decode(scene.features, sparse, dense, True, transformer_fn=shifted)
    transformer, src_shape, pos_shape, tok_shape = seen[0]
    assert len(seen) == 1 and transformer is backbone._raw_sam().mask_decoder.transformer
    assert src_shape == pos_shape == (2, 256, 64, 64)
    assert tok_shape == (2, 1 + 4 + 1 + sparse.shape[1], 256)  # IoU, 4 mask tokens, the HQ token, prompts
    assert torch.equal(rec[0], ref[0]) and torch.equal(rec[1], ref[1])
    assert not torch.allclose(new[0], ref[0], atol=1e-3) and not torch.allclose(new[1], ref[1], atol=1e-4)


def test_persam_transformer_runs_through_decode(backbone, scenes):
    from sambench.registry import load_plugins

    load_plugins()  # the plugin package, as the methods are imported (never ``methods.`` itself)
    from sambench_plugins.methods.persam.guided_decoder import PerSAMTransformer

    scene = scenes(SHAPES[1])
    with torch.no_grad():
        sparse, dense = _prompts(backbone, scene)
        ref_low, ref_iou = backbone.decode(scene.features, sparse, dense, True)
        low, iou = backbone.decode(scene.features, sparse, dense, True, transformer_fn=PerSAMTransformer())
        target = torch.randn(1, 256, generator=torch.Generator().manual_seed(0))
        attn_sim = torch.rand(1, 1, 1, 64 * 64, generator=torch.Generator().manual_seed(1))
        guided_low, _ = backbone.decode(scene.features, sparse, dense, True,
                                        transformer_fn=PerSAMTransformer(target, attn_sim))
    # the re-composed TwoWayTransformer: same ops, regrouped adds (float rounding only)
    torch.testing.assert_close(low, ref_low, rtol=0, atol=1e-5)
    torch.testing.assert_close(iou, ref_iou, rtol=0, atol=1e-6)
    assert not torch.allclose(guided_low, ref_low, atol=1e-3)


def test_decode_refuses_a_bare_embedding(backbone, scenes):
    scene = scenes(SHAPES[0])
    sparse, dense = _prompts(backbone, scene)
    for bare in (scene.features.embedding, ImageFeatures(scene.features.embedding)):
        with pytest.raises(ValueError, match="early ViT features.*vit_early"):
            backbone.decode(bare, sparse, dense)


def test_decode_with_output_token_from_an_embedding_alone(backbone, scenes):
    scene = scenes(SHAPES[0])
    token = torch.randn(1, 256, generator=torch.Generator().manual_seed(2))
    sparse, dense = _prompts(backbone, scene)
    backbone.zero_grad(set_to_none=True)
    try:
        low, out = backbone.decode_with_output_token(scene.features.embedding, token, sparse, dense)
        same_low, same_out = backbone.decode_with_output_token(scene.features, token, sparse, dense)
        assert low.shape == (2, 1, 256, 256) and out.shape == (2, 256)
        assert torch.equal(low, same_low) and torch.equal(out, same_out)
        (low.mean() + out.mean()).backward()
        decoder = backbone._raw_sam().mask_decoder
        assert decoder.output_hypernetworks_mlps[0].layers[0].weight.grad is not None
        assert all(p.grad is None for part in HQ_PARTS for p in getattr(decoder, part).parameters())
    finally:
        backbone.zero_grad(set_to_none=True)


def test_decode_per_image_features_equal_single_calls(backbone, scenes):
    """N images with one prompt set each (features N×…) = N single-image decodes."""
    first, second = scenes(SHAPES[0]), scenes(SHAPES[1])
    both = ImageFeatures(torch.cat([first.features.embedding, second.features.embedding]),
                         {VIT_EARLY: torch.cat([first.features.levels[VIT_EARLY], second.features.levels[VIT_EARLY]])})
    with torch.no_grad():
        sparse, dense = _prompts(backbone, first)
        low, iou = backbone.decode(both, sparse, dense, True)
        for i, scene in enumerate((first, second)):
            one_low, one_iou = backbone.decode(scene.features, sparse[i:i + 1], dense[i:i + 1], True)
            torch.testing.assert_close(low[i:i + 1], one_low, rtol=0, atol=1e-5)
            torch.testing.assert_close(iou[i:i + 1], one_iou, rtol=0, atol=1e-6)


# ----- encoder --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pixels(backbone):
    return backbone.preprocess(make_image((64, 80), seed=3))


def test_encode_with_identity_block_fn_equals_upstream_encoder(backbone, pixels):
    calls = []

    def identity_like(index, block, x):
        calls.append(index)
        return block(x)

    with torch.no_grad():
        up_embedding, up_interm = backbone._raw_sam().image_encoder(pixels)
        hooked = backbone.encode_features(pixels, block_fn=identity_like)
        plain = backbone.encode_features(pixels)
    assert calls == [0, 1]
    for features in (hooked, plain):
        assert torch.equal(features.embedding, up_embedding)
        assert torch.equal(features.levels[VIT_EARLY], up_interm[0].permute(0, 3, 1, 2))


def test_block_fn_changes_the_early_feature_it_collects(backbone, pixels):
    def skip_last(index, block, x):  # block 1 is the global block whose output the decoder fuses
        return x if index == 1 else block(x)

    with torch.no_grad():
        ref = backbone.encode_features(pixels)
        skipped = backbone.encode_features(pixels, block_fn=skip_last)
    assert not torch.allclose(skipped.levels[VIT_EARLY], ref.levels[VIT_EARLY], atol=1e-4)


def test_encode_512_runs_and_decodes(backbone):
    image = make_image((100, 130), seed=4)
    pixels = torch.nn.functional.interpolate(backbone.preprocess(image), size=(512, 512), mode="bilinear")
    with torch.no_grad():
        features = backbone.encode_features(pixels, block_fn=lambda i, blk, x: blk(x))
        plain = backbone.encode_features(pixels)
        sparse, dense = backbone.encode_frame_prompts(boxes=torch.tensor([[10.0, 10.0, 300.0, 200.0]]))
        dense = backbone.no_mask_embedding(1, (32, 32))
        low, iou = backbone.decode(features, sparse, dense, True)
    assert features.embedding.shape == (1, 256, 32, 32) and features.levels[VIT_EARLY].shape == (1, 32, 32, 32)
    assert torch.equal(features.embedding, plain.embedding)
    assert low.shape == (1, 3, 128, 128) and iou.shape == (1, 3) and torch.isfinite(low).all()


def test_gradients_reach_encoder_and_hq_parts(backbone):
    backbone.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            features = backbone.encode_features(backbone.preprocess(make_image((48, 64), seed=7)))
            logits, iou, _ = backbone.predict(features, (48, 64), boxes=torch.tensor([[5.0, 5.0, 40.0, 30.0]]))
            (logits.sigmoid().mean() + iou.sum()).backward()
        raw = backbone._raw_sam()
        for part in HQ_PARTS:
            grads = [p.grad for p in getattr(raw.mask_decoder, part).parameters()]
            assert any(g is not None and g.abs().sum() > 0 for g in grads), part
        assert raw.image_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    finally:
        backbone.zero_grad(set_to_none=True)


# ----- cache, sizes, training switches --------------------------------------------------------
def test_cache_round_trip_stores_the_early_level(tmp_path):
    image = make_image((90, 70), seed=9)
    first = SamHqBackbone(**TINY_HQ, cache_dir=str(tmp_path))
    computed = first.embed_images([image])
    key = first.cache.image_key(image)
    entry = first.cache.get(key)
    assert set(entry) == {"embedding", VIT_EARLY} and entry[VIT_EARLY].shape == (32, 64, 64)
    second = SamHqBackbone(**TINY_HQ, cache_dir=str(tmp_path))
    second.drop_image_encoder("served from the cache")
    second.cache = first.cache
    cached = second.embed_images([image])  # the encoder is gone: this can only come from the cache
    assert torch.equal(cached.embedding, computed.embedding)
    assert torch.equal(cached.levels[VIT_EARLY], computed.levels[VIT_EARLY])
    sparse, dense = second.encode_prompts((90, 70), boxes=torch.tensor([[5.0, 5.0, 60.0, 80.0]]))
    with torch.no_grad():
        assert torch.equal(second.decode(cached, sparse, dense)[0], first.decode(computed, sparse, dense)[0])


def test_sizes_and_encoder_spec(backbone):
    assert backbone.embed_dim == 256 and backbone.mask_threshold == 0.0 and backbone.image_size == 1024
    assert backbone.encoder_spec() == EncoderSpec(width=32, depth=2, num_heads=2, grid=64)
    assert backbone.encoder_pos_embed().shape == (1, 64, 64, 32)
    assert backbone.device == torch.device("cpu")
    assert backbone.capabilities == SamHqBackbone.CAPABILITIES


def test_state_dict_keys_are_the_raw_models(backbone):
    keys = set(backbone.state_dict())
    assert "sam.mask_decoder.hf_token.weight" in keys and "sam.image_encoder.pos_embed" in keys
    assert all(key.startswith("sam.") for key in keys)
    with pytest.raises(AttributeError, match="private"):
        backbone.sam


def test_set_trainable_controls_every_parameter():
    model = SamHqBackbone(**TINY_HQ)
    assert all(p.requires_grad for p in model.parameters())  # not upstream's "HQ parts only"
    raw = model._raw_sam()
    model.set_trainable(mask_decoder=True)
    assert all(p.requires_grad for p in raw.mask_decoder.parameters())
    assert not any(p.requires_grad for p in raw.image_encoder.parameters())
    assert not any(p.requires_grad for p in raw.prompt_encoder.parameters())
    model.set_trainable(mask_decoder=True, output_token_only=True)
    for part in (*HQ_PARTS, "iou_token", "iou_prediction_head"):
        assert not any(p.requires_grad for p in getattr(raw.mask_decoder, part).parameters()), part
    assert all(p.requires_grad for p in raw.mask_decoder.transformer.parameters())
    assert raw.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.requires_grad
    model.set_trainable(image_encoder=True)
    assert all(p.requires_grad for p in raw.image_encoder.parameters())
    assert not any(p.requires_grad for p in raw.mask_decoder.parameters())
    model.set_trainable()
    assert not any(p.requires_grad for p in model.parameters())


def test_capabilities_per_variant_and_configs():
    cls = backbone_class("sam_hq")
    assert cls is SamHqBackbone
    for variant in ("vit_b", "vit_l", "vit_h", "tiny"):
        assert cls.capabilities_for(variant) == cls.CAPABILITIES
    light = cls.capabilities_for("vit_tiny")
    assert TOKEN_INJECTION not in light and VIT_ENCODER not in light and HIGH_RES_FEATURES in light
    configs = backbone_configs()
    for name in ("sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "sam_hq_vit_tiny", "sam_hq_tiny"):
        assert configs[name]["family"] == "sam_hq" and configs[name]["name"] == name
        assert configs[name]["hq_token_only"] is False
    assert capabilities_of(configs["sam_hq_vit_tiny"]) == light
    assert capabilities_of(configs["sam_hq_tiny"]) == cls.CAPABILITIES
    tiny = {k: v for k, v in configs["sam_hq_tiny"].items() if k != "family"}
    assert {k: tiny[k] for k in TINY_HQ} == TINY_HQ


def test_compose_time_pairing_with_the_light_variant():
    from hydra import compose, initialize_config_dir

    from sambench import CONFIG_DIR
    from sambench.cli.build import check_config
    from sambench.registry import load_plugins

    load_plugins()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        fits = compose("train", overrides=["method=dit_layerwise", "backbone=sam_hq_tiny"])
        light = compose("train", overrides=["method=dit_layerwise", "backbone=sam_hq_vit_tiny"])
    check_config(fits)
    with pytest.raises(ConfigError, match=r"token_injection.*'sam_hq_vit_tiny'.*backbones that fit: .*sam_hq_tiny"):
        check_config(light)


# ----- checkpoints ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h", "vit_tiny"])
def test_official_variant_without_weights_names_the_file(variant):
    with pytest.raises(CheckpointError, match=rf"sam_hq_{variant}\.pth.*SysCV/sam-hq.*backbone\.checkpoint="):
        SamHqBackbone(name=f"sam_hq_{variant}", variant=variant)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found: .*nope\.pth \(expected sam_hq_vit_b\.pth\)"):
        SamHqBackbone(name="sam_hq_vit_b", variant="vit_b", checkpoint=str(tmp_path / "nope.pth"))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty: .*empty\.pth \(expected sam_hq_vit_h\.pth\)"):
        SamHqBackbone(name="sam_hq_vit_h", variant="vit_h", checkpoint=str(empty))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointError, match=r"not a weights file: .*garbage\.pth \(expected sam_hq_vit_l\.pth"):
        SamHqBackbone(name="sam_hq_vit_l", variant="vit_l", checkpoint=str(garbage))
    vit_b_like = tmp_path / "vit_b_like.pth"
    torch.save({"mask_decoder.compress_vit_feat.0.weight": torch.zeros(768, 256, 2, 2)}, vit_b_like)
    with pytest.raises(CheckpointError, match=r"does not fit HQ-SAM tiny.*looks like an HQ-SAM vit_b checkpoint "
                                              r"\(sam_hq_vit_b\.pth\)"):
        SamHqBackbone(**TINY_HQ, checkpoint=str(vit_b_like))
    sam_v1 = tmp_path / "sam_v1.pth"
    from sambench.backbones.sam import SamBackbone
    torch.save(SamBackbone(**TINY_SAM)._raw_sam().state_dict(), sam_v1)
    with pytest.raises(CheckpointError, match=r"SAM \(v1\) or MobileSAM checkpoint without HQ-SAM's HQ token"):
        SamHqBackbone(**TINY_HQ, checkpoint=str(sam_v1))


def test_a_saved_tiny_state_dict_loads_back(backbone, pixels, tmp_path):
    path = tmp_path / "sam_hq_tiny.pth"
    torch.save(backbone._raw_sam().state_dict(), path)
    other_seed = SamHqBackbone(**{**TINY_HQ, "init_seed": 1})
    assert not torch.equal(other_seed.encode(pixels), backbone.encode(pixels))
    loaded = SamHqBackbone(**{**TINY_HQ, "init_seed": 1}, checkpoint=str(path))
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        assert torch.equal(loaded.encode(pixels), backbone.encode(pixels))
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": backbone._raw_sam().state_dict()}, wrapped)
    SamHqBackbone(**TINY_HQ, checkpoint=str(wrapped))


# ----- timm's registry ------------------------------------------------------------------------
TIMM_LEAK_CHECK = textwrap.dedent("""
    import importlib, warnings
    import timm, timm.models._registry as registry
    names = sorted(timm.list_models("tiny_vit*"))
    before = {n: registry._model_entrypoints[n] for n in names}
    modules = {n: registry._model_to_module[n] for n in names}
    cfgs = {n: registry._model_pretrained_cfgs.get(n) for n in names}
    pretrained = sorted(timm.list_pretrained("tiny_vit*"))
    assert "tiny_vit_5m_224" in before and "segment_anything_hq" not in __import__("sys").modules
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from sambench.backbones.sam_hq import SamHqBackbone
        SamHqBackbone(name="sam_hq_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2,
                      encoder_num_heads=2, encoder_global_attn_indexes=[1], allow_random_init=True)
    assert not caught, [str(w.message) for w in caught]
    assert sorted(timm.list_models("tiny_vit*")) == names and sorted(timm.list_pretrained("tiny_vit*")) == pretrained
    for n in names:
        assert registry._model_entrypoints[n] is before[n], n
        assert registry._model_entrypoints[n].__module__ == "timm.models.tiny_vit", n
        assert registry._model_to_module[n] == modules[n] and registry._model_pretrained_cfgs.get(n) is cfgs[n], n
    assert type(timm.create_model("tiny_vit_5m_224")).__module__ == "timm.models.tiny_vit"
    # the control: re-running the package's registration does overwrite timm's entries and warn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(importlib.import_module("segment_anything_hq.modeling.tiny_vit_sam"))
    assert any("Overwriting tiny_vit_5m_224" in str(w.message) for w in caught)
    assert registry._model_entrypoints["tiny_vit_5m_224"].__module__ == "segment_anything_hq.modeling.tiny_vit_sam"
    print("ok")
""")


@pytest.mark.slow
def test_building_leaves_timm_registry_and_warnings_alone():
    """In a fresh interpreter: segment_anything_hq must not be imported yet for this to mean anything."""
    result = subprocess.run([sys.executable, "-c", TIMM_LEAK_CHECK], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
    assert "Overwriting" not in result.stderr.split("the control")[0]


# ----- Light HQ-SAM (TinyViT) -----------------------------------------------------------------
@pytest.mark.slow
def test_vit_tiny_random_build_encode_and_parity(tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        light = SamHqBackbone(name="sam_hq_vit_tiny", variant="vit_tiny", allow_random_init=True)
    raw = light._raw_sam()
    assert type(raw.image_encoder).__name__ == "TinyViT"
    assert light.capabilities == SamHqBackbone.capabilities_for("vit_tiny")
    image = make_image((117, 171), seed=11)
    with torch.no_grad():
        features = light.embed_images([image])
        assert features.embedding.shape == (1, 256, 64, 64) and features.levels[VIT_EARLY].shape == (1, 160, 64, 64)
        predictor = import_sam_hq().SamPredictor(raw)
        predictor.set_image(image)
        assert torch.equal(features.embedding, predictor.features)
        assert torch.equal(features.levels[VIT_EARLY], predictor.interm_features[0].permute(0, 3, 1, 2))
        logits, iou, low = light.predict(features, image.shape[:2], boxes=torch.tensor([[20.0, 30.0, 90.0, 100.0]]),
                                         multimask_output=True, float64_coords=True)
        up_masks, up_iou, up_low = predictor.predict(box=np.array([20.0, 30.0, 90.0, 100.0]), multimask_output=True,
                                                     return_logits=True)
    # TinyViT's early feature is channels-last in memory: upstream's convolution runs on that
    # layout, ours on a contiguous copy (cache and fresh features alike): float rounding only
    torch.testing.assert_close(best(low, iou)[0], torch.from_numpy(up_low), rtol=0, atol=1e-6)
    torch.testing.assert_close(best(logits, iou)[0], torch.from_numpy(up_masks), rtol=0, atol=1e-6)
    assert torch.equal(best(iou, iou)[0], torch.from_numpy(up_iou))
    pixels = light.preprocess(image)
    with pytest.raises(ConfigError, match="TinyViT"):
        light.encode(pixels, block_fn=lambda i, blk, x: blk(x))
    with pytest.raises(ConfigError, match="TinyViT"):
        light.encoder_spec()
    with pytest.raises(ValueError, match="1024"):
        light.encode(pixels[..., :512, :512])
    # a state dict round trip (TinyViT caches its attention biases when switched to eval)
    with torch.no_grad():
        for module in raw.image_encoder.modules():
            if hasattr(module, "attention_biases"):
                module.attention_biases.normal_()
        raw.eval()
        expected = light.encode(pixels)
    path = tmp_path / "sam_hq_vit_tiny.pth"
    torch.save(raw.state_dict(), path)
    loaded = SamHqBackbone(name="sam_hq_vit_tiny", variant="vit_tiny", checkpoint=str(path))
    with torch.no_grad():
        assert torch.equal(loaded.encode(pixels), expected)


# ----- end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_sam_prompted_evaluates_on_sam_hq_tiny(tmp_path):
    result = run_job("eval", "method=sam_prompted", "backbone=sam_hq_tiny", "dataset.num_images=2",
                     "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.metrics["num_images"] == 2
    assert any(isinstance(v, float) for v in result.metrics.values())
