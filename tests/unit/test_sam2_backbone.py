"""Sam2Backbone against the official ``sam2`` package on the same model object: builder ==
``build_sam2``, pre-/post-processing and predictions == ``SAM2ImagePredictor``, the re-composed
decoder == ``MaskDecoder.forward``; checkpoint errors, cache, trainable parts, Hydra coexistence
and end-to-end runs with ``backbone=sam2_tiny``. Only random tiny / official-size models are built."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from sambench import REPO_ROOT
from sambench.backbones.interface import (EXTRA_OUTPUT_TOKENS, HIGH_RES_FEATURES, TWO_WAY_TRANSFORMER_FN,
                                          ImageFeatures)
from sambench.backbones.sam2 import HIGH_RES_LEVELS, Sam2Backbone
from sambench.backbones.sam2_build import build_sam2_model, guess_variant, import_sam2
from sambench.backbones.sam_extensions import default_transformer_fn
from sambench.errors import CheckpointError, ConfigError
from sambench.testing import run_job, run_tool, scores

TINY = dict(name="sam2_tiny", variant="tiny", allow_random_init=True)
SIZE = (37, 53)  # odd, wider than tall: SAM 2 squashes it to 1024² (no padding)


@pytest.fixture(scope="module")
def backbone():
    return Sam2Backbone(**TINY).eval()


@pytest.fixture(scope="module")
def predictor(backbone):
    import_sam2()  # never a bare ``import sam2``: it would leave GlobalHydra initialised for later tests
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    with warnings.catch_warnings():  # the predictor scripts its transforms; torch deprecates jit.script
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        return SAM2ImagePredictor(backbone._raw_model())


@pytest.fixture(scope="module")
def image():
    return (np.random.default_rng(0).random((*SIZE, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def features(backbone, image):
    with torch.no_grad():
        return backbone.encode_features(backbone.preprocess(image))


def prompt_cases():
    pts, labels = np.array([[10.3, 20.7], [40.0, 5.0]]), np.array([1, 0])
    box = np.array([3.0, 4.0, 30.0, 33.0])
    return {
        "points": dict(point_coords=pts, point_labels=labels),
        "one_point": dict(point_coords=pts[:1], point_labels=labels[:1]),
        "box": dict(box=box),
        "box_points": dict(point_coords=pts, point_labels=labels, box=box),
    }


def ours(case: dict) -> dict:
    out = {}
    if "point_coords" in case:
        out["points"] = torch.as_tensor(case["point_coords"])[None]
        out["point_labels"] = torch.as_tensor(case["point_labels"])[None]
    if "box" in case:
        out["boxes"] = torch.as_tensor(case["box"]).reshape(-1, 4)
    if "mask_input" in case:
        out["mask_inputs"] = torch.as_tensor(case["mask_input"])[None]
    return out


def max_diffs(reference, predicted) -> list[float]:
    return [float((torch.as_tensor(ref) - got[0]).abs().max()) for ref, got in zip(reference, predicted)]


# ----- building ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["sam2.1_hiera_t", "sam2_hiera_t"])
def test_builder_equals_build_sam2(variant):
    """Same config, overrides and initialisation as the package's own builder (Hydra compose)."""
    import_sam2()
    from hydra import initialize_config_module
    from sam2.build_sam import build_sam2

    folder = "sam2.1" if variant.startswith("sam2.1") else "sam2"
    with initialize_config_module("sam2", version_base="1.2"):
        torch.manual_seed(0)
        reference = build_sam2(f"configs/{folder}/{variant}.yaml", ckpt_path=None, device="cpu")
    torch.manual_seed(0)
    model = build_sam2_model(variant, allow_random_init=True)
    expected, got = reference.state_dict(), model.state_dict()
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    for decoder in (model.sam_mask_decoder, reference.sam_mask_decoder):
        assert decoder.dynamic_multimask_via_stability and decoder.dynamic_multimask_stability_thresh == 0.98
    assert not model.training
    assert guess_variant(got) == variant


def test_tiny_preset_shapes_and_seed(backbone, features):
    raw = backbone._raw_model()
    assert backbone.image_size == 1024 and backbone.embed_dim == 256 and backbone.mask_threshold == 0.0
    assert raw.image_encoder.trunk.channel_list == [128, 64, 32, 16]
    assert tuple(features.embedding.shape) == (1, 256, 64, 64)
    assert {n: tuple(v.shape) for n, v in features.levels.items()} == {
        "high_res_s0": (1, 32, 256, 256), "high_res_s1": (1, 64, 128, 128)}
    again = Sam2Backbone(**TINY)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), backbone.state_dict().values()))
    other = Sam2Backbone(**TINY, init_seed=1)
    assert not torch.equal(other._raw_model().no_mem_embed, raw.no_mem_embed)
    with pytest.raises(CheckpointError, match="4 block counts"):
        Sam2Backbone(**TINY, trunk_stages=[1, 1])


def test_capabilities_and_registry():
    from sambench.backbones.registry import backbone_class, backbone_configs, capabilities_of

    assert backbone_class("sam2") is Sam2Backbone
    configs = backbone_configs()
    names = [f"{v}_hiera_{s}" for v in ("sam2.1", "sam2") for s in ("t", "s", "b+", "l")] + ["sam2_tiny"]
    for name in names:
        assert configs[name]["family"] == "sam2" and configs[name]["name"] == name
        assert capabilities_of(configs[name]) == {TWO_WAY_TRANSFORMER_FN, EXTRA_OUTPUT_TOKENS, HIGH_RES_FEATURES}


def test_backbone_choices_compose_with_plus_and_dot_in_the_name():
    from sambench.cli.launch import check_group_choices, compose_checked

    for name in ("sam2.1_hiera_b+", "sam2_hiera_l", "sam2_tiny"):
        check_group_choices([f"backbone={name}"])
        cfg = compose_checked("eval", [f"backbone={name}"])
        assert cfg.backbone.name == name and cfg.backbone.family == "sam2"
    with pytest.raises(ConfigError, match="token_injection.*backbones that fit: .*sam_tiny"):
        compose_checked("train", ["method=dit_layerwise", "backbone=sam2.1_hiera_t"])


@pytest.mark.parametrize("name, width", [("sam2.1_hiera_t", 96), ("sam2_hiera_s", 96)])
def test_official_configs_build_through_the_composition_root(name, width, tmp_path):
    from hydra import compose, initialize_config_dir

    from sambench import CONFIG_DIR
    from sambench.cli.build import build_backbone

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", [f"backbone={name}", "backbone.checkpoint=null", "backbone.allow_random_init=true",
                               f"cache.dir={tmp_path}"])
    built = build_backbone(cfg)
    assert isinstance(built, Sam2Backbone) and built.variant == name and built.cache is not None
    assert built._raw_model().image_encoder.trunk.pos_embed.shape[1] == width


# ----- checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant, filename", [("sam2.1_hiera_t", "sam2.1_hiera_tiny.pt"),
                                               ("sam2.1_hiera_b+", "sam2.1_hiera_base_plus.pt"),
                                               ("sam2_hiera_l", "sam2_hiera_large.pt")])
def test_official_variant_without_checkpoint_names_the_file(variant, filename):
    with pytest.raises(CheckpointError) as info:
        Sam2Backbone(name=variant, variant=variant)
    message = str(info.value)
    assert filename in message and "github.com/facebookresearch/sam2" in message and "backbone.checkpoint" in message


def test_unknown_variant():
    with pytest.raises(CheckpointError, match="unknown SAM 2 variant 'sam2.1_hiera_x'.*sam2.1_hiera_t"):
        Sam2Backbone(name="x", variant="sam2.1_hiera_x")


def test_bad_files_name_the_file(tmp_path):
    missing, empty, garbage, listing = (tmp_path / n for n in ("missing.pt", "empty.pt", "garbage.pt", "list.pt"))
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a checkpoint at all")
    torch.save({"model": [1, 2]}, listing)
    for path, what in ((missing, "not found"), (empty, "is empty"), (garbage, "not a weights file"),
                       (listing, "no state dict of tensors")):
        with pytest.raises(CheckpointError) as info:
            Sam2Backbone(name="sam2.1_hiera_t", variant="sam2.1_hiera_t", checkpoint=str(path))
        message = str(info.value)
        assert what in message and str(path) in message and "sam2.1_hiera_tiny.pt" in message, message


def shaped_like(model) -> dict:
    """A state dict with the model's keys and shapes whose file is tiny (stride-0 tensors)."""
    return {k: torch.zeros(()).expand(v.shape) for k, v in model.state_dict().items()}


def test_other_size_file_says_which_model_it_looks_like(tmp_path):
    tiny_file, v20_file = tmp_path / "sam2.1_hiera_tiny.pt", tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": shaped_like(build_sam2_model("sam2.1_hiera_t", allow_random_init=True))}, tiny_file)
    torch.save({"model": shaped_like(build_sam2_model("sam2_hiera_t", allow_random_init=True))}, v20_file)
    with pytest.raises(CheckpointError) as info:
        Sam2Backbone(name="s", variant="sam2.1_hiera_s", checkpoint=str(tiny_file))
    message = str(info.value)
    assert str(tiny_file) in message and "sam2.1_hiera_small.pt" in message
    assert "looks like a sam2.1_hiera_t checkpoint (sam2.1_hiera_tiny.pt)" in message and "missing keys" in message
    with pytest.raises(CheckpointError, match=r"looks like a sam2_hiera_t checkpoint \(sam2_hiera_tiny.pt\)"):
        Sam2Backbone(name="t", variant="sam2.1_hiera_t", checkpoint=str(v20_file))


def test_tiny_state_dict_loads_back(tmp_path, backbone):
    seed1 = build_sam2_model("tiny", init_seed=1)
    wrapped, bare = tmp_path / "tiny1.pt", tmp_path / "tiny1_bare.pt"
    torch.save({"model": seed1.state_dict()}, wrapped)
    torch.save(seed1.state_dict(), bare)
    for path in (wrapped, bare):
        loaded = Sam2Backbone(**TINY, checkpoint=str(path))._raw_model().state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in seed1.state_dict().items())
    with pytest.raises(CheckpointError, match="does not fit SAM 2 tiny"):
        Sam2Backbone(**TINY, trunk_embed_dim=8, checkpoint=str(wrapped))


# ----- parity with SAM2ImagePredictor -----------------------------------------------------------
def test_preprocess_and_features_equal_the_predictor(backbone, predictor, image, features):
    predictor.set_image(image)
    assert torch.equal(backbone.preprocess(image), predictor._transforms(image)[None])
    assert backbone.input_size(SIZE) == (1024, 1024)
    assert torch.equal(features.embedding, predictor._features["image_embed"])
    for name, level in zip(HIGH_RES_LEVELS, predictor._features["high_res_feats"]):
        assert torch.equal(features.levels[name], level)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("case", list(prompt_cases()))
def test_predictions_equal_the_predictor(backbone, predictor, image, features, case, multimask):
    """Masks (logits at the original size), IoU and the clamped low-res logits: difference 0."""
    prompts = prompt_cases()[case]
    predictor.set_image(image)
    reference = predictor.predict(**prompts, multimask_output=multimask, return_logits=True)
    with torch.no_grad():
        predicted = backbone.predict(features, SIZE, multimask_output=multimask, **ours(prompts))
    assert predicted[0].shape[-2:] == SIZE and predicted[1].shape[1] == (3 if multimask else 1)
    assert max_diffs(reference, predicted) == [0.0, 0.0, 0.0]
    masks = predictor.predict(**prompts, multimask_output=multimask)[0]
    assert np.array_equal(masks, (predicted[0][0] > backbone.mask_threshold).numpy())


@pytest.mark.parametrize("multimask", [True, False])
def test_mask_input_equals_the_predictor(backbone, predictor, image, features, multimask):
    predictor.set_image(image)
    case = dict(point_coords=np.array([[20.0, 12.0]]), point_labels=np.array([1]))
    previous = predictor.predict(**case, multimask_output=False)[2]  # 1×256×256, clamped to ±32
    case["mask_input"] = previous
    reference = predictor.predict(**case, multimask_output=multimask, return_logits=True)
    with torch.no_grad():
        predicted = backbone.predict(features, SIZE, multimask_output=multimask, **ours(case))
    assert max_diffs(reference, predicted) == [0.0, 0.0, 0.0]


def test_several_boxes_equal_the_predictors_batched_prompts(backbone, predictor, image, features):
    boxes = np.array([[3.0, 4.0, 30.0, 33.0], [0.0, 0.0, 52.0, 36.0], [20.5, 10.0, 40.0, 30.0]])
    predictor.set_image(image)
    reference = predictor.predict(box=boxes, multimask_output=False, return_logits=True)
    with torch.no_grad():
        logits, iou, low = backbone.predict(features, SIZE, boxes=torch.as_tensor(boxes))
    for ref, got in zip(reference, (logits, iou, low)):
        assert torch.equal(torch.as_tensor(ref), got)


def test_cached_features_equal_the_predictor_within_1e6(tmp_path, predictor, image):
    """Through embed_images and the cache the features are identical but contiguous copies (the
    predictor's are permuted views); the decoder's convolutions then round differently: ≤ 1e-6."""
    backbone = Sam2Backbone(**TINY, cache_dir=str(tmp_path)).eval()
    predictor.set_image(image)
    prompts = prompt_cases()["box_points"]
    reference = predictor.predict(**prompts, multimask_output=True, return_logits=True)
    first = backbone.embed_images([image])
    entry = backbone.cache.get(backbone.cache.image_key(image))
    assert set(entry) == {"embedding", *HIGH_RES_LEVELS}
    assert torch.equal(entry["high_res_s0"], predictor._features["high_res_feats"][0][0])

    def no_encoding(*args, **kwargs):
        raise AssertionError("a cache hit must not encode")

    backbone.encode_features = no_encoding
    second = backbone.embed_images([image])
    assert torch.equal(first.embedding, second.embedding)
    assert all(torch.equal(first.levels[n], second.levels[n]) for n in HIGH_RES_LEVELS)
    with torch.no_grad():
        one = backbone.predict(first[0], SIZE, multimask_output=True, **ours(prompts))
        two = backbone.predict(second[0], SIZE, multimask_output=True, **ours(prompts))
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    assert max(max_diffs(reference, two)) <= 1e-6


def test_normalize_pixels_pads_like_sam_and_normalises_like_sam2(backbone):
    pixels = torch.randint(0, 256, (2, 3, 1000, 900)).float()
    out = backbone.normalize_pixels(pixels)
    assert out.shape == (2, 3, 1024, 1024) and not out[..., 1000:, :].any() and not out[..., 900:].any()
    from torchvision.transforms import Normalize

    expected = Normalize(backbone.transforms.mean, backbone.transforms.std)(pixels / 255.0)
    assert torch.allclose(out[..., :1000, :900], expected, atol=1e-6)


def test_hole_filling_on_cpu_warns_and_leaves_masks_unchanged(backbone, features):
    try:
        import_sam2()
        from sam2 import _C  # noqa: F401
        pytest.skip("sam2's CUDA extension is installed: hole filling runs")
    except ImportError:
        pass
    filling = Sam2Backbone(**TINY, max_hole_area=8.0, max_sprinkle_area=8.0).eval()
    low = torch.randn(2, 1, 256, 256)
    with pytest.warns(UserWarning, match="Skipping the post-processing step"):
        filled = filling.postprocess(low, SIZE)
    assert torch.equal(filled, backbone.postprocess(low, SIZE))


# ----- decoder extension points -----------------------------------------------------------------
def decoder_call(backbone, features, sparse, dense, multimask):
    raw = backbone._raw_model()
    return raw.sam_mask_decoder(
        image_embeddings=features.embedding, image_pe=raw.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
        repeat_image=features.embedding.shape[0] != sparse.shape[0],
        high_res_features=[features.levels[n] for n in HIGH_RES_LEVELS])[:2]


@pytest.mark.parametrize("multimask, fallback, training, per_prompt_features", [
    (True, False, False, False),
    (False, False, False, False),
    (False, True, False, False),  # every single mask counts as unstable: the best multimask output instead
    (False, True, True, False),  # training: no dynamic fallback
    (True, False, False, True),
    (False, True, False, True),
])
def test_recomposed_decoder_equals_upstream_bit_for_bit(backbone, features, multimask, fallback, training,
                                                        per_prompt_features):
    points = torch.tensor([[[100.0, 200.0]], [[900.0, 40.0]]])
    sparse, dense = backbone.encode_frame_prompts(points, torch.ones(2, 1, dtype=torch.long))
    if per_prompt_features:
        features = ImageFeatures(features.embedding * torch.tensor([1.0, 0.5]).view(2, 1, 1, 1),
                                 {n: v.expand(2, -1, -1, -1) for n, v in features.levels.items()})
    decoder = backbone._raw_model().sam_mask_decoder
    thresh = decoder.dynamic_multimask_stability_thresh
    try:
        decoder.dynamic_multimask_stability_thresh = 1.01 if fallback else thresh
        decoder.train(training)
        with torch.no_grad():
            expected = decoder_call(backbone, features, sparse, dense, multimask)
            plain = backbone.decode(features, sparse, dense, multimask)
            hooked = backbone.decode(features, sparse, dense, multimask, transformer_fn=default_transformer_fn)
    finally:
        decoder.dynamic_multimask_stability_thresh = thresh
        decoder.eval()
    assert expected[0].shape == (2, 3 if multimask else 1, 256, 256)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(expected, plain, hooked))


def test_decode_refuses_a_bare_embedding_and_encode_a_block_fn(backbone, features):
    sparse, dense = backbone.encode_frame_prompts(torch.tensor([[[10.0, 10.0]]]), torch.ones(1, 1))
    with pytest.raises(ValueError, match="high_res_s0"):
        backbone.decode(features.embedding, sparse, dense)
    with pytest.raises(ValueError, match="bare embedding"):
        backbone.decode(ImageFeatures(features.embedding), sparse, dense)
    with pytest.raises(ConfigError, match="block_fn"):
        backbone.encode_features(torch.zeros(1, 3, 1024, 1024), block_fn=lambda i, block, x: block(x))


def test_persam_transformer_runs_on_sam2(backbone, features):
    """PerSAM's transformer_fn on SAM 2's TwoWayTransformer: without guidance it is the plain
    decoder (its attention is written out, upstream SAM 2 uses scaled_dot_product_attention:
    equal up to float rounding); with the two signals it changes the masks."""
    from sambench_plugins.methods.persam.guided_decoder import PerSAMTransformer

    sparse, dense = backbone.encode_frame_prompts(torch.tensor([[[300.0, 400.0], [10.0, 10.0]]]),
                                                  torch.tensor([[1, 0]]))
    with torch.no_grad():
        plain = backbone.decode(features, sparse, dense, multimask_output=True)
        same = backbone.decode(features, sparse, dense, multimask_output=True, transformer_fn=PerSAMTransformer())
        guided = backbone.decode(features, sparse, dense, multimask_output=True, transformer_fn=PerSAMTransformer(
            target_embedding=features.embedding[0, :, 10, 10], attn_sim=torch.rand(1, 1, 1, 64 * 64)))
    for a, b in zip(plain, same):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(plain[0], guided[0], atol=1e-3)


def test_decode_with_output_token(backbone, features):
    sparse, dense = backbone.encode_frame_prompts(torch.tensor([[[100.0, 100.0]], [[700.0, 300.0]]]),
                                                  torch.ones(2, 1, dtype=torch.long))
    token = torch.randn(1, 256, requires_grad=True)
    seen = []

    def recording(transformer, src, pos_src, tokens):
        seen.append(tokens.shape)
        return default_transformer_fn(transformer, src, pos_src, tokens)

    masks, token_out = backbone.decode_with_output_token(features, token, sparse, dense, transformer_fn=recording)
    assert masks.shape == (2, 1, 256, 256) and token_out.shape == (2, 256)
    assert seen == [torch.Size([2, 3 + sparse.shape[1], 256])]  # obj-score token, the token, mask token 0
    (token_out.pow(2).sum() + masks.mean()).backward()  # a plain sum of a LayerNorm output has no gradient
    assert token.grad is not None and token.grad.abs().sum() > 0
    other, _ = backbone.decode_with_output_token(features, token.detach() * 0, sparse, dense)
    assert not torch.equal(other, masks.detach())


def test_image_pe_and_no_mask_embedding(backbone):
    prompt_encoder = backbone._raw_model().sam_prompt_encoder
    assert torch.equal(backbone.image_pe((64, 64)), prompt_encoder.get_dense_pe())
    assert backbone.image_pe((32, 48)).shape == (1, 256, 32, 48)
    _, dense = backbone.encode_frame_prompts(torch.zeros(2, 1, 2), torch.ones(2, 1))
    assert torch.equal(backbone.no_mask_embedding(2, (64, 64)), dense)


# ----- training ---------------------------------------------------------------------------------
def trainable(backbone) -> set[str]:
    return {name for name, p in backbone.named_parameters() if p.requires_grad}


def test_set_trainable_parts():
    backbone = Sam2Backbone(**TINY)
    backbone.set_trainable(mask_decoder=True)
    names = trainable(backbone)
    assert names and all(n.startswith("sam2.sam_mask_decoder.") for n in names)
    assert not any(part in n for n in names for part in ("conv_s0", "conv_s1", "pred_obj_score_head"))
    assert "sam2.sam_mask_decoder.iou_prediction_head.layers.0.weight" in names
    assert "sam2.sam_mask_decoder.obj_score_token.weight" in names  # an input token of the transformer
    backbone.set_trainable(mask_decoder=True, iou_head=False)
    assert not any("iou_prediction_head" in n for n in trainable(backbone))
    backbone.set_trainable(image_encoder=True)
    names = trainable(backbone)
    assert {"sam2.no_mem_embed", "sam2.sam_mask_decoder.conv_s0.weight", "sam2.sam_mask_decoder.conv_s1.bias"} <= names
    assert all(n.startswith(("sam2.image_encoder.", "sam2.no_mem_embed", "sam2.sam_mask_decoder.conv_s")) for n in names)
    backbone.set_trainable(prompt_encoder=True, no_mask_embed=False)
    names = trainable(backbone)
    assert names and all(n.startswith("sam2.sam_prompt_encoder.") for n in names) and not any("no_mask" in n for n in names)
    backbone.set_trainable(mask_decoder=True, output_token_only=True)
    names = trainable(backbone)
    assert not any(p in n for n in names for p in ("iou_token", "iou_prediction_head", "output_hypernetworks_mlps.1"))
    assert "sam2.sam_mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in names
    backbone.set_trainable(image_encoder=True, prompt_encoder=True, mask_decoder=True)
    assert not any(n.startswith(("sam2.memory_attention", "sam2.memory_encoder", "sam2.obj_ptr_proj"))
                   for n in trainable(backbone))


def test_gradients_reach_the_decoder_through_predict(features):
    backbone = Sam2Backbone(**TINY)
    backbone.set_trainable(mask_decoder=True)
    backbone.train()
    logits, iou, _ = backbone.predict(features, SIZE, boxes=torch.tensor([[3.0, 4.0, 30.0, 33.0]]))
    (logits.sigmoid().mean() + iou.mean()).backward()
    grads = {n for n, p in backbone.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert "sam2.sam_mask_decoder.output_hypernetworks_mlps.0.layers.0.weight" in grads
    assert not any(p.grad is not None for n, p in backbone.named_parameters() if not p.requires_grad)


def test_private_model_and_drop_image_encoder(tmp_path, image):
    backbone = Sam2Backbone(**TINY, cache_dir=str(tmp_path))
    with pytest.raises(AttributeError, match="private"):
        backbone.sam2
    backbone.drop_image_encoder("CLIP2SAM never runs it")
    assert backbone.cache is None and backbone.preprocess(image).shape == (1, 3, 1024, 1024)
    with pytest.raises(RuntimeError, match="CLIP2SAM never runs it"):
        backbone.encode_features(torch.zeros(1, 3, 1024, 1024))


# ----- Hydra coexistence and the real app ------------------------------------------------------
def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_sam2_import_and_hydra_in_both_orders():
    """A fresh process: reading the registry imports no sam2; building first (sam2 imported
    outside any Hydra app) leaves GlobalHydra clear so our compose works; building inside a
    composed Hydra context leaves that context alone. A bare ``import sam2`` would not."""
    result = run_python("""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from sambench import CONFIG_DIR
        from sambench.backbones.registry import capabilities_of, backbone_configs
        capabilities_of(backbone_configs()["sam2_tiny"])
        assert "sam2" not in sys.modules, "the registry imported sam2"
        from sambench.backbones.sam2 import Sam2Backbone
        Sam2Backbone(name="sam2_tiny", variant="tiny", allow_random_init=True)
        assert "sam2" in sys.modules and not GlobalHydra.instance().is_initialized()
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            assert compose("eval", overrides=["backbone=sam2_tiny"]).backbone.variant == "tiny"
        print("first order ok")
    """)
    assert result.returncode == 0 and "first order ok" in result.stdout, result.stderr[-3000:]
    result = run_python("""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from sambench import CONFIG_DIR
        from sambench.backbones.sam2 import Sam2Backbone
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            hydra = GlobalHydra.instance().hydra
            Sam2Backbone(name="sam2_tiny", variant="tiny", allow_random_init=True)
            assert "sam2" in sys.modules and GlobalHydra.instance().hydra is hydra
            assert compose("eval", overrides=["backbone=sam2_tiny"]).backbone.name == "sam2_tiny"
        assert not GlobalHydra.instance().is_initialized()
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            compose("eval")
        print("second order ok")
    """)
    assert result.returncode == 0 and "second order ok" in result.stdout, result.stderr[-3000:]
    result = run_python("""
        from hydra.core.global_hydra import GlobalHydra
        import sam2
        print("bare import initialises GlobalHydra:", GlobalHydra.instance().is_initialized())
    """)
    assert "bare import initialises GlobalHydra: True" in result.stdout, result.stderr[-3000:]


@pytest.mark.slow
def test_sam_prompted_eval_on_sam2_tiny(tmp_path):
    result = run_job("eval", "backbone=sam2_tiny", "method=sam_prompted", "trainer.device=cpu",
                     "dataset.num_images=2", f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.metrics["num_images"] == 2 and 0.0 <= result.metrics["mIoU"] <= 100.0  # percent
    assert scores(tmp_path / "run") == result.metrics
    assert any((tmp_path / "cache").rglob("*.pt")) or any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_train_tool_with_sam2_tiny(tmp_path):
    """The real app (``hydra.main`` running while sam2 is first imported) trains two steps."""
    run = tmp_path / "run"
    result = run_tool("tools/train.py", "backbone=sam2_tiny", "trainer.device=cpu", "dataset.num_images=2",
                      "trainer.max_steps=2", f"cache.dir={tmp_path / 'cache'}", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 2 and (run / "checkpoints" / "last.pt").is_file()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainable"] and all(".sam2.sam_mask_decoder." in k for k in state["trainable"]), list(state["trainable"])
