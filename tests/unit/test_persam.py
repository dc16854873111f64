"""PerSAM / PerSAM-F: the official code's exact behaviours on crafted inputs (persam.md §1-3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sambench.testing import TINY_SAM
from PIL import Image

from sambench.backbones.sam import SamBackbone
from sambench.errors import DatasetError
from sambench_plugins.methods.persam.guided_decoder import PerSAMTransformer, guided_attention
from sambench_plugins.methods.persam.prior import (
    foreground_features, guidance, local_similarity_map, location_prior, mask_box, reference_cells,
    similarity_map,
)
from sambench_plugins.methods.persam.scale_weights import MaskScaleWeights, fit_scale_weights, persam_f_loss
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Reference, Sample

load_plugins()
MEAN, STD = 123.675, 58.395


@pytest.fixture(scope="module")
def sam():
    return SamBackbone(**TINY_SAM)


def image(h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def square_mask(h=60, w=80, value=(128, 0, 0), box=(20, 10, 50, 40)):
    mask = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = value
    return mask


# ----- reference mask: erosion through normalisation ---------------------------------------------
def test_reference_cells_follow_the_official_preprocessing(sam):
    mask = square_mask()
    red = np.array(Image.fromarray(mask).resize((1024, 768), Image.BILINEAR))[..., 0].astype(np.float32)
    padded = np.zeros((1024, 1024), np.float32)
    padded[:768] = (red - MEAN) / STD
    expected = F.interpolate(torch.from_numpy(padded)[None, None], size=(64, 64), mode="bilinear")[0, 0] > 0
    cells = reference_cells(sam, mask)
    assert torch.equal(cells, expected)
    assert not cells[48:].any()  # the zero padding (rows 768.. -> cells 48..) is never foreground


def disk_mask(value, h=60, w=80):
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w, 3), np.uint8)
    mask[(yy - 30) ** 2 + (xx - 37) ** 2 <= 17**2] = value
    return mask


def test_perseg_red_128_erodes_compared_to_white(sam):
    """R = 128 survives only where the resized red channel exceeds 123.675; 255 down to ~124."""
    red = reference_cells(sam, disk_mask((128, 0, 0)))
    white = reference_cells(sam, disk_mask((255, 255, 255)))
    assert red.sum() < white.sum() and not (red & ~white).any()


def test_empty_reference_is_a_clear_error(sam):
    embedding = sam.embed_images([image()]).embedding[0]
    with pytest.raises(DatasetError, match="cat/00"):
        foreground_features(embedding, reference_cells(sam, np.zeros((60, 80, 3), np.uint8)), "cat/00")


# ----- location prior, guidance -------------------------------------------------------------------
def test_points_are_argmax_argmin_with_row_major_ties():
    sim = torch.zeros(4, 5)
    sim[1, 3] = sim[2, 1] = 5.0  # tie for the maximum: the first in row-major order wins
    sim[3, 4] = -1.0
    positive, negative = location_prior(sim)
    assert positive.tolist() == [[3.0, 1.0]] and negative.tolist() == [[4.0, 3.0]]  # (x=col, y=row)
    sim = torch.zeros(4, 5)  # all equal: both resolve to the first pixel
    assert location_prior(sim)[1].tolist() == [[0.0, 0.0]]
    top = location_prior(torch.arange(20.0).reshape(4, 5), positives=2)[0]
    assert top.tolist() == [[4.0, 3.0], [3.0, 3.0]]


def test_guidance_is_zscored_resized_sigmoid():
    sim = torch.linspace(-1, 1, 30 * 40).reshape(30, 40) ** 2
    z = (sim - sim.mean()) / sim.std(unbiased=True)
    expected = torch.sigmoid(F.interpolate(z[None, None], size=(64, 64), mode="bilinear")).reshape(1, 1, 1, 4096)
    assert torch.allclose(guidance(sim), expected, atol=1e-7)
    assert guidance(sim).shape == (1, 1, 1, 4096)


def test_similarity_map_is_cosine_upsampled_and_postprocessed(sam):
    embedding = sam.embed_images([image()]).embedding[0]
    target = F.normalize(torch.randn(1, 256), dim=-1)
    sim = similarity_map(sam, target, embedding, (60, 80))
    cosine = (target @ F.normalize(embedding, dim=0).reshape(256, -1)).reshape(1, 1, 64, 64)
    expected = sam._raw_sam().postprocess_masks(F.interpolate(cosine, scale_factor=4, mode="bilinear"), (768, 1024), (60, 80))
    assert sim.shape == (60, 80) and torch.allclose(sim, expected[0, 0], atol=1e-6)


def test_local_map_is_the_mean_of_per_cell_maps(sam):
    embedding = sam.embed_images([image()]).embedding[0]
    fg = torch.randn(5, 256)
    maps = [similarity_map(sam, F.normalize(f[None], dim=-1), embedding, (60, 80)) for f in fg]
    assert torch.allclose(local_similarity_map(sam, fg, embedding, (60, 80)), torch.stack(maps).mean(0), atol=1e-5)


def test_refinement_box_has_inclusive_maxima():
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask).tolist() == [[3.0, 2.0, 8.0, 4.0]]
    assert mask_box(torch.zeros(3, 3, dtype=torch.bool)) is None


# ----- decoder: aliasing of the target embedding, second softmax ------------------------------------
def official_style_transformer(transformer, src, pos_src, tokens, t):
    """The official forward's structure with its in-place adds on an aliased tensor."""
    keys = src.flatten(2).permute(0, 2, 1)
    key_pe = pos_src.flatten(2).permute(0, 2, 1)
    point_embedding = tokens.clone()
    queries = point_embedding
    for layer in transformer.layers:
        queries += t  # in place: on the first pass this also changes point_embedding
        queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
    q = queries + point_embedding
    q += t
    k = keys + key_pe
    queries = transformer.norm_final_attn(queries + transformer.final_attn_token_to_image(q=q, k=k, v=keys))
    return queries, keys


def test_target_embedding_reproduces_the_aliasing_arithmetic(sam):
    transformer = sam._raw_sam().mask_decoder.transformer
    torch.manual_seed(0)
    src, pos, tokens, t = torch.randn(1, 256, 64, 64), torch.randn(1, 256, 64, 64), torch.randn(1, 7, 256), torch.randn(1, 1, 256)
    with torch.no_grad():
        expected = official_style_transformer(transformer, src, pos, tokens, t)
        ours = PerSAMTransformer(target_embedding=t)(transformer, src, pos, tokens)
        plain = transformer(src, pos, tokens)
    assert torch.allclose(ours[0], expected[0], atol=1e-5) and torch.allclose(ours[1], expected[1], atol=1e-5)
    assert not torch.allclose(ours[0], plain[0], atol=1e-3)


def test_guided_attention_is_a_second_softmax(sam):
    attn = sam._raw_sam().mask_decoder.transformer.layers[0].cross_attn_token_to_image
    torch.manual_seed(1)
    q, k, v, bias = torch.randn(1, 7, 256), torch.randn(1, 4096, 256), torch.randn(1, 4096, 256), torch.rand(1, 1, 1, 4096)
    with torch.no_grad():
        heads = lambda x, proj: proj(x).reshape(1, -1, attn.num_heads, attn.internal_dim // attn.num_heads).transpose(1, 2)
        qh, kh, vh = heads(q, attn.q_proj), heads(k, attn.k_proj), heads(v, attn.v_proj)
        probs = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
        out = torch.softmax(probs + bias, dim=-1) @ vh
        expected = attn.out_proj(out.transpose(1, 2).reshape(1, 7, attn.internal_dim))
        assert torch.allclose(guided_attention(attn, q, k, v, bias), expected, atol=1e-6)
        assert torch.allclose(guided_attention(attn, q, k, v, None), attn(q=q, k=k, v=v), atol=1e-6)


def test_no_signals_equal_upstream_decoder(sam):
    embedding = sam.embed_images([image()])
    sparse, dense = sam.encode_prompts((60, 80), torch.tensor([[[10.0, 20.0], [30.0, 40.0]]]), torch.tensor([[1, 0]]))
    a = sam.decode(embedding, sparse, dense, False)
    b = sam.decode(embedding, sparse, dense, False, transformer_fn=PerSAMTransformer())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----- PerSAM-F --------------------------------------------------------------------------------------
def test_scale_weights_mix_and_loss():
    weights = MaskScaleWeights()
    assert weights.weights.tolist() == pytest.approx([1 / 3, 1 / 3])
    with torch.no_grad():
        weights.weights.copy_(torch.tensor([0.2, 0.5]))
    maps = torch.randn(3, 6, 7)
    assert torch.allclose(weights(maps), 0.3 * maps[0] + 0.2 * maps[1] + 0.5 * maps[2])
    logits, target = torch.randn(6, 7), torch.rand(6, 7) > 0.5
    p, y = logits.sigmoid(), target.float()
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p_t = p * y + (1 - p) * (1 - y)
    focal = ((0.25 * y + 0.75 * (1 - y)) * ce * (1 - p_t) ** 2).mean()
    assert persam_f_loss(logits, target).item() == pytest.approx((dice + focal).item(), rel=1e-5)


def test_precomputed_and_rerun_fitting_agree():
    torch.manual_seed(0)
    maps, target = [torch.randn(3, 20, 30)], [torch.rand(20, 30) > 0.6]
    calls = []
    rerun = fit_scale_weights(lambda: calls.append(1) or maps, target, iterations=30)
    once = fit_scale_weights(maps, target, iterations=30)
    assert len(calls) == 30
    assert torch.allclose(rerun.weights, once.weights, atol=1e-7)
    assert not torch.allclose(once.weights, torch.full((2,), 1 / 3))


# ----- the methods end to end --------------------------------------------------------------------------
def sample(references=1, index=0):
    refs = [Reference(image(seed=10 + i), square_mask(), name=f"toy/0{i}") for i in range(references)]
    masks = torch.from_numpy(square_mask()[..., 0] > 0)[None]
    return Sample(index=index, image=image(seed=3), masks=masks, references=refs,
                  meta={"object": "toy", "prediction_path": "toy/05"})


class PredictSpy:
    """Wraps sam.predict and records each call's prompts."""

    def __init__(self, sam):
        self.sam, self.calls, self.original = sam, [], sam.predict

    def __call__(self, embedding, size, points=None, point_labels=None, **kwargs):
        self.calls.append(dict(points=points, labels=point_labels, **kwargs))
        return self.original(embedding, size, points, point_labels, **kwargs)


def test_persam_call_sequence(sam, monkeypatch):
    method = METHODS.get("persam")(sam=sam)
    spy = PredictSpy(sam)
    monkeypatch.setattr(sam, "predict", spy)
    [prediction] = method.predict(Batch([sample()]))
    first, refine1, refine2 = spy.calls
    assert first["labels"].tolist() == [[1, 0]] and not first["multimask_output"]
    assert isinstance(first["transformer_fn"], PerSAMTransformer)
    assert first["transformer_fn"].attn_sim.shape == (1, 1, 1, 4096) and first["transformer_fn"].t.shape == (1, 1, 256)
    assert refine1["boxes"] is None and refine1["mask_inputs"].shape == (1, 1, 256, 256) and refine1["multimask_output"]
    assert refine2["multimask_output"] and refine2["mask_inputs"].shape == (1, 1, 256, 256)
    fell_back = prediction.fallbacks == 1
    assert fell_back == (refine2["boxes"] is None)
    assert prediction.masks.shape == (1, 60, 80) and prediction.masks.dtype == torch.bool


def test_ablation_switches_change_the_prompts(sam, monkeypatch):
    method = METHODS.get("persam")(sam=sam, negative_point=False, guided_attention=False, semantic_prompt=False,
                                   refinement_steps=0)
    spy = PredictSpy(sam)
    monkeypatch.setattr(sam, "predict", spy)
    method.predict(Batch([sample()]))
    assert len(spy.calls) == 1 and spy.calls[0]["labels"].tolist() == [[1]] and spy.calls[0]["transformer_fn"] is None


def test_empty_predicted_mask_falls_back_and_is_counted(sam, monkeypatch):
    method = METHODS.get("persam")(sam=sam)
    original = sam.predict

    def negative(*args, **kwargs):
        logits, iou, low = original(*args, **kwargs)
        return logits.abs().neg() - 1, iou, low  # every pixel background

    monkeypatch.setattr(sam, "predict", negative)
    [prediction] = method.predict(Batch([sample()]))
    assert prediction.fallbacks == 1 and not prediction.masks.any()


def test_few_shot_pools_the_reference_features(sam):
    method = METHODS.get("persam")(sam=sam)
    two = sample(references=2)
    concept = method.adapt(two)
    embeddings = sam.embed_images([r.image for r in two.references]).embedding
    fg = torch.cat([foreground_features(e, reference_cells(sam, r.mask_rgb)) for r, e in zip(two.references, embeddings)])
    assert torch.allclose(concept.target_embedding, fg.mean(0, keepdim=True))
    assert concept.fg_features.shape[0] == 2 * reference_cells(sam, square_mask()).sum()


def test_several_instances_suppress_and_stop_on_overlap(sam, monkeypatch):
    method = METHODS.get("persam")(sam=sam, max_instances=3)
    a = torch.zeros(60, 80, dtype=torch.bool)
    a[:10, :10] = True
    b = torch.zeros(60, 80, dtype=torch.bool)
    b[30:40, 30:40] = True
    seen = []

    def fake_segment(concept, embedding, size, sim, negative_from):
        seen.append(sim.clone())
        return [a, b, b][len(seen) - 1], 0

    monkeypatch.setattr(method, "segment", fake_segment)
    [prediction] = method.predict(Batch([sample()]))
    assert prediction.masks.shape[0] == 2  # the third mask repeats b: stop
    assert torch.equal(seen[1][a], torch.full((100,), float(seen[0].min())))  # a's region suppressed


def test_persam_f_fits_saves_and_reloads(sam, tmp_path, monkeypatch):
    method = METHODS.get("persam_f")(sam=sam, iterations=20, run_dir=tmp_path)
    spy = PredictSpy(sam)
    monkeypatch.setattr(sam, "predict", spy)
    [prediction] = method.predict(Batch([sample()]))
    fit_call, test_call = spy.calls[0], spy.calls[1]
    assert fit_call["labels"].tolist() == [[1]] and fit_call["multimask_output"]  # positive point only
    assert test_call["labels"].tolist() == [[1]] and test_call.get("transformer_fn") is None
    saved = torch.load(tmp_path / "persam_f_weights" / "toy.pt", weights_only=True)
    fitted = method.adapt(sample()).scale_weights.weights
    assert torch.equal(saved["weights"], fitted.detach())
    monkeypatch.setattr("sambench_plugins.methods.persam.persam.fit_scale_weights", lambda *a, **k: pytest.fail("refitted"))
    reloaded = METHODS.get("persam_f")(sam=sam, weights_dir=str(tmp_path / "persam_f_weights"))
    assert torch.equal(reloaded.adapt(sample()).scale_weights.weights.detach(), fitted.detach())
    assert torch.equal(reloaded.predict(Batch([sample()]))[0].masks, prediction.masks)


# ----- one-shot benchmarks: small supports, many concepts -----------------------------------------
def test_a_reference_keeping_no_cell_uses_its_densest_cell_and_counts_a_fallback(sam, monkeypatch):
    """A one-pixel PerSeg-style support (60×80 image -> 768×1024 frame, 16 px cells): no cell
    survives the official mask path; its cell is computed here by hand from the pixel centre
    (y + 0.5)·768/60/16, (x + 0.5)·1024/80/16."""
    mask = np.zeros((60, 80, 3), np.uint8)
    mask[30, 41] = (128, 0, 0)
    assert not reference_cells(sam, mask).any()
    ref = Reference(image(seed=10), mask, name="small/00")
    small = Sample(index=0, image=image(seed=3), masks=torch.zeros(1, 60, 80, dtype=torch.bool), references=[ref],
                   meta={"object": "small"})
    method = METHODS.get("persam")(sam=sam)
    [first] = method.predict(Batch([small]))
    [again] = method.predict(Batch([small]))
    row, col = int(30.5 * 768 / 60 / 16), int(41.5 * 1024 / 80 / 16)
    assert (row, col) == (24, 33)
    embedding = sam.embed_images([ref.image]).embedding[0]
    concept = method.adapt(small)
    assert torch.equal(concept.fg_features, embedding[:, row, col][None])
    assert first.fallbacks - again.fallbacks == 1  # the reference's fallback is counted once


def test_concepts_are_kept_by_name_and_mask_and_only_the_last_sixteen(sam, monkeypatch):
    from sambench_plugins.methods.persam import persam as persam_module

    method = METHODS.get("persam")(sam=sam)
    embeds = []
    original = sam.embed_images
    monkeypatch.setattr(sam, "embed_images", lambda images: embeds.append(len(images)) or original(images))
    same_name = [Sample(index=0, image=image(seed=3), masks=torch.zeros(1, 60, 80, dtype=torch.bool),
                        references=[Reference(image(seed=10), square_mask(box=box), name="val2014/x.jpg")])
                 for box in ((20, 10, 50, 40), (5, 5, 30, 30))]
    a, b = method.adapt(same_name[0]), method.adapt(same_name[1])
    assert a is not b and not torch.equal(a.target_feat, b.target_feat)  # one image, two classes' masks
    assert method.adapt(same_name[0]) is a and len(embeds) == 2
    for i in range(persam_module.CACHED_CONCEPTS):
        method.adapt(Sample(index=0, image=image(seed=3), references=[Reference(image(seed=10), square_mask(), name=f"c/{i}")]))
    assert len(method._concepts) == persam_module.CACHED_CONCEPTS
    embeds.clear()
    method.adapt(same_name[0])  # evicted: computed again
    assert embeds == [1]
