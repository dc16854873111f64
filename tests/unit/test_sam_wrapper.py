"""SamBackbone against upstream ``segment_anything`` (SamPredictor, Sam.forward), batched
prompts, the differentiable path and the two extension points (decoder transformer, encoder
blocks). Uses a tiny, randomly initialised SAM (1024² input, full-size prompt encoder/decoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench.backbones.sam_extensions import default_transformer_fn

SHAPES = [(120, 160), (160, 120)]  # landscape and portrait: padding on different sides
ATOL = 1e-5


def make_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with smooth structure plus noise (not a constant: every pixel counts)."""
    h, w = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    blob = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2)[..., None] * 90.0
    noise = rng.integers(0, 40, size=(h, w, 3))
    return np.clip(base + blob + noise, 0, 255).astype(np.uint8)


def assert_close(actual, expected, atol=ATOL):
    actual = torch.as_tensor(actual).detach().cpu().float()
    expected = torch.as_tensor(expected).detach().cpu().float()
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def backbone() -> SamBackbone:
    return SamBackbone(**TINY_SAM, cache_dir=None)


class _Scene:
    def __init__(self, backbone: SamBackbone, shape: tuple[int, int]):
        self.shape = shape
        self.image = make_image(shape, seed=shape[0] * 1000 + shape[1])
        self.embedding = backbone.embed_images([self.image]).embedding  # 1×256×64×64
        self.predictor = SamPredictor(backbone._raw_sam())
        self.predictor.set_image(self.image)


@pytest.fixture(scope="module")
def scenes(backbone):
    cache: dict[tuple[int, int], _Scene] = {}

    def get(shape):
        if shape not in cache:
            cache[shape] = _Scene(backbone, shape)
        return cache[shape]

    return get


# Coordinates in original pixels, valid in both 120×160 and 160×120 images.
PROMPTS = {
    "box": dict(box=[20.0, 30.0, 90.0, 100.0]),
    "points_pos_neg": dict(points=[[40.0, 50.0], [100.0, 90.0]], labels=[1, 0]),
    "box_point": dict(box=[10.0, 15.0, 70.0, 110.0], points=[[45.0, 60.0]], labels=[1]),
}


def ours(backbone, scene, prompt, multimask, mask_inputs=None):
    points = labels = boxes = None
    if "points" in prompt:
        points = torch.tensor([prompt["points"]], dtype=torch.float32)
        labels = torch.tensor([prompt["labels"]])
    if "box" in prompt:
        boxes = torch.tensor([prompt["box"]], dtype=torch.float32)
    with torch.no_grad():
        return backbone.predict(
            scene.embedding, scene.shape, points=points, point_labels=labels, boxes=boxes,
            mask_inputs=mask_inputs, multimask_output=multimask,
        )


def upstream(scene, prompt, multimask, mask_input=None):
    return scene.predictor.predict(
        point_coords=np.array(prompt["points"], dtype=np.float32) if "points" in prompt else None,
        point_labels=np.array(prompt["labels"]) if "points" in prompt else None,
        box=np.array(prompt["box"], dtype=np.float32) if "box" in prompt else None,
        mask_input=mask_input,
        multimask_output=multimask,
        return_logits=True,
    )


# ----- parity with SamPredictor ---------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_embeddings_equal_predictor_features(backbone, scenes, shape):
    scene = scenes(shape)
    assert scene.embedding.shape == (1, 256, 64, 64)
    assert_close(scene.embedding, scene.predictor.features)
    assert scene.predictor.input_size == backbone.input_size(shape)


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
@pytest.mark.parametrize("prompt_name", sorted(PROMPTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_predict_matches_sam_predictor(backbone, scenes, shape, prompt_name, multimask):
    scene = scenes(shape)
    prompt = PROMPTS[prompt_name]
    logits, iou, low_res = ours(backbone, scene, prompt, multimask)
    up_masks, up_iou, up_low = upstream(scene, prompt, multimask)
    m = 3 if multimask else 1
    assert logits.shape == (1, m, *shape)
    assert iou.shape == (1, m)
    assert low_res.shape == (1, m, 256, 256)
    assert_close(logits[0], up_masks)
    assert_close(iou[0], up_iou)
    assert_close(low_res[0], up_low)
    # the logits are not degenerate (a constant output would make the parity meaningless)
    assert logits.std() > 1e-3


def test_mask_input_matches_sam_predictor(backbone, scenes):
    scene = scenes(SHAPES[1])
    prompt = PROMPTS["box_point"]
    _, _, up_low = upstream(scene, prompt, False)  # 1×256×256 logits from a first pass
    logits, iou, _ = ours(backbone, scene, prompt, True, mask_inputs=torch.from_numpy(up_low)[None])
    up_masks, up_iou, _ = upstream(scene, prompt, True, mask_input=up_low)
    assert_close(logits[0], up_masks)
    assert_close(iou[0], up_iou)
    # and the mask input is really used
    no_mask_logits, _, _ = ours(backbone, scene, prompt, True)
    assert not torch.allclose(no_mask_logits, logits, atol=1e-3)


def test_sam_forward_matches_and_is_no_grad(backbone, scenes):
    """Upstream ``Sam.forward`` gives the same low-res logits but no graph; ours keeps one."""
    scene = scenes(SHAPES[0])
    boxes = torch.tensor([PROMPTS["box"]["box"]])
    resized = backbone.transform.apply_image(scene.image)
    record = {
        "image": torch.as_tensor(resized).permute(2, 0, 1).contiguous(),
        "original_size": scene.shape,
        "boxes": backbone.transform.apply_boxes_torch(boxes, scene.shape),
    }
    out = backbone._raw_sam()([record], multimask_output=False)[0]
    assert not out["low_res_logits"].requires_grad
    assert not out["iou_predictions"].requires_grad

    logits, iou, low_res = backbone.predict(scene.embedding, scene.shape, boxes=boxes)
    assert logits.requires_grad and iou.requires_grad and low_res.requires_grad
    assert_close(low_res, out["low_res_logits"])
    assert_close(iou, out["iou_predictions"])
    assert torch.equal(logits > backbone._raw_sam().mask_threshold, out["masks"])


# ----- batched prompts ----------------------------------------------------------------------
def test_batched_boxes_equal_single_calls(backbone, scenes, multimask=True):
    scene = scenes(SHAPES[1])
    boxes = torch.tensor(
        [[20.0, 30.0, 90.0, 100.0], [0.0, 0.0, 119.0, 159.0], [50.0, 60.0, 55.0, 66.0], [5.0, 80.0, 60.0, 150.0]]
    )
    with torch.no_grad():
        logits, iou, low_res = backbone.predict(scene.embedding, scene.shape, boxes=boxes, multimask_output=multimask)
        m = 3 if multimask else 1
        assert logits.shape == (4, m, *scene.shape) and iou.shape == (4, m)
        for i in range(len(boxes)):
            one_logits, one_iou, one_low = backbone.predict(
                scene.embedding, scene.shape, boxes=boxes[i : i + 1], multimask_output=multimask
            )
            assert_close(logits[i : i + 1], one_logits)
            assert_close(iou[i : i + 1], one_iou)
            assert_close(low_res[i : i + 1], one_low)
    # different boxes give different masks (the batch is not one prompt broadcast)
    assert not torch.allclose(logits[0], logits[1], atol=1e-3)


def test_batched_points_equal_predict_torch(backbone, scenes):
    scene = scenes(SHAPES[0])
    points = torch.tensor([[[40.0, 50.0], [100.0, 90.0]], [[10.0, 10.0], [60.0, 70.0]], [[80.0, 20.0], [30.0, 110.0]]])
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])
    with torch.no_grad():
        logits, iou, low_res = backbone.predict(
            scene.embedding, scene.shape, points=points, point_labels=labels, multimask_output=True
        )
    coords = scene.predictor.transform.apply_coords_torch(points, scene.shape)
    up_masks, up_iou, up_low = scene.predictor.predict_torch(coords, labels, multimask_output=True, return_logits=True)
    assert_close(logits, up_masks)
    assert_close(iou, up_iou)
    assert_close(low_res, up_low)


# ----- differentiable path ------------------------------------------------------------------
def _grad_norm(param: torch.nn.Parameter) -> float:
    return 0.0 if param.grad is None else float(param.grad.abs().sum())


def test_gradients_reach_decoder_and_encoder(backbone):
    shape = (48, 64)
    image = make_image(shape, seed=7)
    sam = backbone._raw_sam()
    decoder_params = {
        "transformer.layers.0.self_attn.q_proj": sam.mask_decoder.transformer.layers[0].self_attn.q_proj.weight,
        "transformer.final_attn": sam.mask_decoder.transformer.final_attn_token_to_image.v_proj.weight,
        "output_upscaling": sam.mask_decoder.output_upscaling[0].weight,
        "iou_prediction_head": sam.mask_decoder.iou_prediction_head.layers[0].weight,
    }
    encoder_params = {
        "patch_embed": sam.image_encoder.patch_embed.proj.weight,
        "pos_embed": sam.image_encoder.pos_embed,
        "blocks.0.qkv": sam.image_encoder.blocks[0].attn.qkv.weight,
        "blocks.1.mlp": sam.image_encoder.blocks[1].mlp.lin1.weight,
        "neck": sam.image_encoder.neck[0].weight,
    }
    backbone.zero_grad(set_to_none=True)
    try:
        with torch.enable_grad():
            embedding = backbone.encode(backbone.preprocess(image))
            assert embedding.requires_grad
            logits, iou, _ = backbone.predict(embedding, shape, boxes=torch.tensor([[5.0, 5.0, 40.0, 30.0]]))
            (logits.sigmoid().mean() + iou.sum()).backward()
        for name, param in {**decoder_params, **encoder_params}.items():
            assert _grad_norm(param) > 0, f"no gradient reached {name}"
        # the prompt encoder's box-corner embeddings are used too
        assert _grad_norm(sam.prompt_encoder.point_embeddings[2].weight) > 0
    finally:
        backbone.zero_grad(set_to_none=True)


def test_gradients_reach_decoder_from_cached_embedding(backbone, scenes):
    """With a frozen (cached) embedding, the decoder is still trainable."""
    scene = scenes(SHAPES[0])
    backbone.zero_grad(set_to_none=True)
    try:
        logits, iou, _ = backbone.predict(scene.embedding, scene.shape, boxes=torch.tensor([PROMPTS["box"]["box"]]))
        logits.mean().backward()
        assert _grad_norm(backbone._raw_sam().mask_decoder.output_hypernetworks_mlps[0].layers[0].weight) > 0
        assert all(p.grad is None for p in backbone._raw_sam().image_encoder.parameters())
    finally:
        backbone.zero_grad(set_to_none=True)


# ----- extension points ---------------------------------------------------------------------
def _prompt_embeddings(backbone, scene):
    return backbone.encode_prompts(
        scene.shape,
        points=torch.tensor([[[40.0, 50.0], [100.0, 90.0]], [[10.0, 10.0], [60.0, 70.0]]]),
        point_labels=torch.tensor([[1, 0], [1, 1]]),
        boxes=torch.tensor([[20.0, 30.0, 90.0, 100.0], [0.0, 0.0, 80.0, 80.0]]),
    )


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multi"])
def test_decode_default_transformer_fn_is_exact(backbone, scenes, multimask):
    scene = scenes(SHAPES[0])
    with torch.no_grad():
        sparse, dense = _prompt_embeddings(backbone, scene)
        ref_low, ref_iou = backbone.decode(scene.embedding, sparse, dense, multimask)
        low, iou = backbone.decode(scene.embedding, sparse, dense, multimask, transformer_fn=default_transformer_fn)
    assert low.shape == (2, 3 if multimask else 1, 256, 256)
    assert torch.equal(low, ref_low)
    assert torch.equal(iou, ref_iou)


def test_transformer_fn_receives_upstream_transformer_and_is_used(backbone, scenes):
    scene = scenes(SHAPES[0])
    seen = []

    def recording(transformer, src, pos_src, tokens):
        seen.append((transformer, src.shape, pos_src.shape, tokens.shape))
        return transformer(src, pos_src, tokens)

    def shifted(transformer, src, pos_src, tokens):
        return transformer(src, pos_src, tokens + 0.5)

    with torch.no_grad():
        sparse, dense = _prompt_embeddings(backbone, scene)
        ref_low, ref_iou = backbone.decode(scene.embedding, sparse, dense, True)
        rec_low, rec_iou = backbone.decode(scene.embedding, sparse, dense, True, transformer_fn=recording)
        new_low, new_iou = backbone.decode(scene.embedding, sparse, dense, True, transformer_fn=shifted)
    assert len(seen) == 1
    transformer, src_shape, pos_shape, tok_shape = seen[0]
    assert transformer is backbone._raw_sam().mask_decoder.transformer
    assert src_shape == pos_shape == (2, 256, 64, 64)
    # IoU token + 4 mask tokens + 2 points + 2 box corners (no padding point with a box)
    assert tok_shape == (2, 1 + 4 + sparse.shape[1], 256) and sparse.shape[1] == 4
    assert torch.equal(rec_low, ref_low) and torch.equal(rec_iou, ref_iou)
    assert not torch.allclose(new_low, ref_low, atol=1e-3)
    assert not torch.allclose(new_iou, ref_iou, atol=1e-4)


def _persam_like_transformer_fn(target: torch.Tensor):
    """A transformer_fn rebuilt from the upstream TwoWayTransformer's submodules, adding a
    target embedding to the queries before each block (the shape of PerSAM's change to the decoder)."""

    def fn(transformer, src, pos_src, tokens):
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = pos_src.flatten(2).permute(0, 2, 1)
        query_pe = tokens + target
        queries = tokens
        for layer in transformer.layers:
            queries, keys = layer(queries=queries + target, keys=keys, query_pe=query_pe, key_pe=key_pe)
        q = queries + query_pe + target
        attn_out = transformer.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys)
        return transformer.norm_final_attn(queries + attn_out), keys

    return fn


def test_transformer_fn_can_rebuild_two_way_transformer_from_submodules(backbone, scenes):
    scene = scenes(SHAPES[1])
    with torch.no_grad():
        sparse, dense = _prompt_embeddings(backbone, scene)
        ref_low, ref_iou = backbone.decode(scene.embedding, sparse, dense, False)
        zero_low, zero_iou = backbone.decode(
            scene.embedding, sparse, dense, False, transformer_fn=_persam_like_transformer_fn(torch.zeros(1, 1, 256))
        )
        target = torch.randn(1, 1, 256, generator=torch.Generator().manual_seed(0))
        t_low, t_iou = backbone.decode(
            scene.embedding, sparse, dense, False, transformer_fn=_persam_like_transformer_fn(target)
        )
    assert_close(zero_low, ref_low, atol=1e-5)
    assert_close(zero_iou, ref_iou, atol=1e-6)
    assert not torch.allclose(t_low, ref_low, atol=1e-3)


def test_transformer_fn_is_differentiable(backbone, scenes):
    scene = scenes(SHAPES[0])
    target = torch.zeros(1, 1, 256, requires_grad=True)
    sparse, dense = _prompt_embeddings(backbone, scene)
    low, iou = backbone.decode(scene.embedding, sparse, dense, True, transformer_fn=_persam_like_transformer_fn(target))
    backbone.zero_grad(set_to_none=True)
    try:
        (low.mean() + iou.sum()).backward()
        assert target.grad is not None and target.grad.abs().sum() > 0
    finally:
        backbone.zero_grad(set_to_none=True)


@pytest.fixture(scope="module")
def pixels(backbone):
    return backbone.preprocess(make_image((64, 80), seed=3))


def test_encode_default_block_fn_is_exact(backbone, pixels, scenes):
    with torch.no_grad():
        ref = backbone.encode(pixels)
        out = backbone.encode(pixels, block_fn=lambda i, blk, x: blk(x))
    assert ref.shape == (1, 256, 64, 64)
    assert torch.equal(out, ref)


def test_block_fn_called_once_per_block_in_order(backbone, pixels):
    calls = []

    def recording(index, block, x):
        calls.append((index, block, tuple(x.shape)))
        return block(x)

    def skip_last(index, block, x):
        return x if index == len(backbone._raw_sam().image_encoder.blocks) - 1 else block(x)

    with torch.no_grad():
        ref = backbone.encode(pixels)
        out = backbone.encode(pixels, block_fn=recording)
        skipped = backbone.encode(pixels, block_fn=skip_last)
    blocks = list(backbone._raw_sam().image_encoder.blocks)
    assert [c[0] for c in calls] == list(range(len(blocks))) == [0, 1]
    assert all(c[1] is blocks[i] for i, c in enumerate(calls))
    assert all(c[2] == (1, 64, 64, 32) for c in calls)
    assert torch.equal(out, ref)
    assert not torch.allclose(skipped, ref, atol=1e-4)  # the hook replaces the block call


# ----- sizes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(120, 160), (160, 120), (37, 1000), (1000, 37), (1024, 1024), (2048, 1536), (33, 33)])
def test_input_size_and_postprocess_sizes(backbone, shape):
    h, w = shape
    expected = backbone.transform.apply_image(np.zeros((h, w, 3), dtype=np.uint8)).shape[:2]
    assert backbone.input_size(shape) == tuple(expected)
    assert max(backbone.input_size(shape)) == 1024
    low_res = torch.randn(2, 3, 256, 256)
    assert backbone.postprocess(low_res, shape).shape == (2, 3, h, w)
    # same as upstream postprocess_masks with the resized image size
    assert_close(
        backbone.postprocess(low_res, shape), backbone._raw_sam().postprocess_masks(low_res, tuple(expected), shape), atol=0
    )
    assert backbone.preprocess(np.zeros((h, w, 3), dtype=np.uint8)).shape == (1, 3, 1024, 1024)


def test_preprocess_matches_sam_and_pads_with_zeros(backbone):
    image = make_image((120, 160), seed=5)
    pixels = backbone.preprocess(image)
    resized = backbone.transform.apply_image(image)
    expected = backbone._raw_sam().preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
    assert torch.equal(pixels, expected)
    assert (pixels[..., 768:, :] == 0).all()  # 120×160 -> 768×1024, padded at the bottom
    assert (pixels[..., :768, :] != 0).any()
