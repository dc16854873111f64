"""Unit tests of the OV-SAM CLIP2SAM building blocks (methods/ovsam)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from sambench_plugins.methods.ovsam.classifier import cosine_logits, ensemble_labels, geometric_ensemble
from sambench_plugins.methods.ovsam.fpn import FPN
from sambench_plugins.methods.ovsam.losses import classification_loss, point_mask_losses
from sambench_plugins.methods.ovsam.point_sampling import point_sample, uncertain_point_coords
from sambench_plugins.methods.ovsam.roi import RegionEmbedding, map_roi_levels, multi_level_roi_align
from sambench_plugins.methods.ovsam.text_embeddings import (VILD_TEMPLATES, build_text_embeddings, cached_text_embeddings,
                                             class_synonyms)


# ----- FPN ------------------------------------------------------------------------------------
def _pyramid(channels=(4, 8, 16, 32), size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, size >> i, size >> i, generator=g) for i, c in enumerate(channels)]


def test_fpn_shapes_and_extra_levels():
    torch.manual_seed(0)
    feats = _pyramid()
    outs = FPN([4, 8, 16, 32], out_channels=8, num_outs=4)(feats)
    assert [tuple(o.shape) for o in outs] == [(1, 8, 32, 32), (1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4)]
    outs5 = FPN([4, 8, 16, 32], out_channels=8, num_outs=5)(feats)
    assert tuple(outs5[4].shape) == (1, 8, 2, 2)
    assert torch.equal(outs5[4], outs5[3][:, :, ::2, ::2])
    with pytest.raises(ValueError):
        FPN([4, 8], num_outs=1)


def test_fpn_top_down_flow():
    torch.manual_seed(0)
    fpn = FPN([4, 8, 16, 32], out_channels=8)
    feats = _pyramid()
    base = fpn(feats)
    coarse_changed = feats[:3] + [feats[3] + 1.0]
    out = fpn(coarse_changed)
    assert not torch.allclose(out[0], base[0])  # coarsest input reaches the finest output
    fine_changed = [feats[0] + 1.0] + feats[1:]
    out = fpn(fine_changed)
    assert torch.equal(out[3], base[3])  # no bottom-up path
    assert not torch.allclose(out[0], base[0])


# ----- RoI ------------------------------------------------------------------------------------
def test_map_roi_levels():
    sides = [32, 111, 112, 224, 447, 448, 2000]
    boxes = torch.tensor([[10.0, 20.0, 10.0 + s, 20.0 + s] for s in sides])
    assert map_roi_levels(boxes).tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert map_roi_levels(torch.tensor([[0.0, 0.0, 56.0, 224.0]])).tolist() == [1]  # sqrt(w·h) = 112
    assert map_roi_levels(boxes, num_levels=2).tolist() == [0, 0, 1, 1, 1, 1, 1]


def test_multi_level_roi_align_matches_per_level():
    g = torch.Generator().manual_seed(1)
    strides = (4, 8, 16, 32)
    feats = [torch.randn(2, 3, 256 // s, 256 // s, generator=g) for s in strides]
    rois = torch.tensor([[0, 5.0, 7.0, 40.0, 30.0], [1, 10.0, 10.0, 140.0, 130.0], [0, 0.0, 3.0, 250.0, 240.0],
                         [1, 1.0, 2.0, 255.0, 255.0], [1, 30.5, 20.25, 90.0, 200.0]])
    out = multi_level_roi_align(feats, rois, strides=strides, output_size=12)
    assert tuple(out.shape) == (5, 3, 12, 12)
    levels = map_roi_levels(rois[:, 1:])
    assert sorted(set(levels.tolist())) == [0, 1, 2]
    for k in range(5):
        lvl = int(levels[k])
        want = roi_align(feats[lvl], rois[k:k + 1], 12, spatial_scale=1 / strides[lvl], sampling_ratio=0, aligned=True)
        assert torch.allclose(out[k], want[0])
        other = roi_align(feats[(lvl + 1) % 4], rois[k:k + 1], 12, spatial_scale=1 / strides[(lvl + 1) % 4],
                          sampling_ratio=0, aligned=True)
        assert not torch.allclose(out[k], other[0])
    assert multi_level_roi_align(feats, rois[:0]).shape == (0, 3, 12, 12)


def test_region_embedding():
    emb = RegionEmbedding(4, 6)
    assert emb.proj.bias is None
    x = torch.randn(3, 4, 12, 12)
    out = emb(x)
    assert tuple(out.shape) == (3, 6)
    want = torch.relu(torch.einsum("oc,kchw->kohw", emb.proj.weight[:, :, 0, 0], x)).mean(dim=(2, 3))
    assert torch.allclose(out, want, atol=1e-6)
    assert (out >= 0).all()


# ----- classifier -----------------------------------------------------------------------------
def test_cosine_logits_by_hand():
    region = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    text = torch.tensor([[[0.0, 1.0], [1.0, 1.0]],  # class 0: best synonym at 45°
                         [[-1.0, 0.0], [0.0, -5.0]]])  # class 1: max(-1, 0) for region 0
    logits = cosine_logits(region, text)
    want = torch.tensor([[100 / math.sqrt(2), 0.0, 0.0], [-100.0 / math.sqrt(2), 100.0, 0.0]])
    assert torch.allclose(logits, want, atol=1e-4)
    assert torch.allclose(cosine_logits(region, text, scale=1.0)[:, :2], want[:, :2] / 100, atol=1e-6)


def test_geometric_ensemble_by_hand():
    q_logits = torch.tensor([[1.0, 0.0, 0.0]])
    c_logits = torch.tensor([[0.0, 2.0, 0.0]])
    novel = torch.tensor([False, True])
    out = geometric_ensemble(q_logits, c_logits, novel, alpha=0.1, beta=0.9)
    zq = math.e + 2
    zc = 2 + math.e ** 2
    q = [math.e / zq, 1 / zq]
    c = [1 / zc, math.e ** 2 / zc]
    want = [q[0] ** 0.9 * c[0] ** 0.1, q[1] ** 0.1 * c[1] ** 0.9]
    assert out.shape == (1, 2)
    assert torch.allclose(out, torch.tensor([want]), atol=1e-6)
    assert ensemble_labels(q_logits, c_logits, novel).tolist() == [1]  # novel class follows CLIP
    assert ensemble_labels(q_logits, c_logits, torch.tensor([False, False])).tolist() == [0]
    assert ensemble_labels(q_logits, c_logits, novel, valid=torch.tensor([True, False])).tolist() == [0]


# ----- text embeddings --------------------------------------------------------------------------
def test_templates_and_synonyms():
    assert len(VILD_TEMPLATES) == 14 and VILD_TEMPLATES[0] == "a photo of a {}."
    assert VILD_TEMPLATES[1] == "This is a photo of a {}" and VILD_TEMPLATES[-1] == "There is a large {} in the scene."
    assert class_synonyms("Dining_Table/table") == ["dining table", "table"]
    assert class_synonyms("cup_or_mug,  Tea_cup") == ["cup", "mug", "tea cup"]
    assert class_synonyms("person") == ["person"]
    with pytest.raises(ValueError):
        class_synonyms(" , /")


@pytest.fixture(scope="module")
def tiny_clip():
    from sambench.backbones.clip import ClipBackbone
    return ClipBackbone(model="tiny", allow_random_init=True)


def _count_calls(monkeypatch, clip):
    calls = []
    original = clip.encode_text

    def counting(texts):
        calls.append(list(texts))
        return original(texts)

    monkeypatch.setattr(clip, "encode_text", counting)
    return calls


def test_build_text_embeddings(tiny_clip):
    emb = build_text_embeddings(tiny_clip, ["cat_or_kitten/puss", "dog"])
    assert tuple(emb.shape) == (2, 3, tiny_clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2, 3), atol=1e-5)
    assert torch.equal(emb[1, 1], emb[1, 0]) and torch.equal(emb[1, 2], emb[1, 0])  # padded by repetition
    assert not torch.allclose(emb[0, 1], emb[0, 0])
    per_template = F.normalize(tiny_clip.encode_text([t.format("dog") for t in VILD_TEMPLATES]).float(), dim=-1)
    assert torch.allclose(emb[1, 0], F.normalize(per_template.mean(0), dim=-1), atol=1e-5)
    assert torch.allclose(emb[0, 1], build_text_embeddings(tiny_clip, ["kitten"])[0, 0], atol=1e-5)


def test_cached_text_embeddings(tiny_clip, tmp_path, monkeypatch):
    calls = _count_calls(monkeypatch, tiny_clip)
    names = ["cat", "dog/puppy"]
    first = cached_text_embeddings(tiny_clip, names, tmp_path / "cache", "tiny", "random0")
    assert len(calls) == 2
    files = list((tmp_path / "cache").glob("*.pt"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob(".*tmp"))
    entry = torch.load(files[0], weights_only=True)
    assert entry["class_names"] == names and torch.equal(entry["embeddings"], first)
    second = cached_text_embeddings(tiny_clip, names, tmp_path / "cache", "tiny", "random0")
    assert len(calls) == 2 and torch.equal(first, second)  # reused: the text encoder did not run
    third = cached_text_embeddings(tiny_clip, ["cat"], tmp_path / "cache", "tiny", "random0")
    assert len(calls) == 3 and third.shape[0] == 1  # another class list, another entry
    cached_text_embeddings(tiny_clip, names, tmp_path / "cache", "tiny", "other-weights")
    assert len(calls) == 5 and len(list((tmp_path / "cache").glob("*.pt"))) == 3
    files[0].write_bytes(b"garbage")  # corrupt entry: regenerated
    again = cached_text_embeddings(tiny_clip, names, tmp_path / "cache", "tiny", "random0")
    assert len(calls) == 7 and torch.allclose(again, first)


# ----- point sampling -------------------------------------------------------------------------
def test_point_sample_bilinear():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.375], [0.25, 0.125]]])  # pixel centres, then a midpoint
    out = point_sample(x, coords)
    assert tuple(out.shape) == (1, 1, 3)
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 7.0, 0.5]))


def test_uncertain_point_coords():
    logits = torch.full((2, 1, 16, 16), 10.0)
    logits[:, :, :, :8] = 0.0  # left half uncertain
    logits[1] *= -1
    coords = uncertain_point_coords(logits, num_points=100, generator=torch.Generator().manual_seed(0))
    assert tuple(coords.shape) == (2, 100, 2)
    assert coords.min() >= 0 and coords.max() <= 1
    assert (coords[:, :75, 0] < 0.5).all()  # the 75 most uncertain come first
    assert (coords[:, 75:, 0] >= 0.5).any()  # the rest are uniform
    again = uncertain_point_coords(logits, num_points=100, generator=torch.Generator().manual_seed(0))
    other = uncertain_point_coords(logits, num_points=100, generator=torch.Generator().manual_seed(1))
    assert torch.equal(coords, again) and not torch.equal(coords, other)
    random_only = uncertain_point_coords(logits, num_points=1000, importance=0.0, generator=torch.Generator().manual_seed(0))
    assert 0.35 < (random_only[..., 0] < 0.5).float().mean() < 0.65


# ----- losses ---------------------------------------------------------------------------------
def test_classification_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, -1.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2, 1])  # 2 = background
    ce = [-torch.log_softmax(logits[i], 0)[labels[i]].item() for i in range(3)]
    want = (ce[0] + 0.1 * ce[1] + ce[2]) / 2.1
    assert classification_loss(logits, labels).item() == pytest.approx(want, rel=1e-6)
    assert classification_loss(logits, labels, background_weight=1.0).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    assert classification_loss(logits[:0], labels[:0]).item() == 0.0


def test_point_mask_losses_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 16, 16, generator=g)
    gt = torch.rand(3, 16, 16, generator=g) > 0.5
    bce, dice = point_mask_losses(logits, gt, num_points=50, generator=torch.Generator().manual_seed(5))
    coords = uncertain_point_coords(logits, 50, generator=torch.Generator().manual_seed(5))
    p = point_sample(logits, coords)[:, 0]
    t = point_sample(gt[:, None].float(), coords)[:, 0]
    want_bce = (F.softplus(-p) * t + F.softplus(p) * (1 - t)).mean()
    s = p.sigmoid()
    want_dice = (1 - (2 * (s * t).sum(1) + 1) / (s.sum(1) + t.sum(1) + 1)).mean()
    assert bce.item() == pytest.approx(want_bce.item(), rel=1e-5)
    assert dice.item() == pytest.approx(want_dice.item(), rel=1e-5)
    # a confident correct prediction scores far lower than a confident wrong one
    target = torch.zeros(1, 32, 32, dtype=torch.bool)
    target[:, 8:24, 8:24] = True
    good = torch.where(target, 8.0, -8.0)[:, None]
    good_bce, good_dice = point_mask_losses(good, target, num_points=200, generator=torch.Generator().manual_seed(0))
    bad_bce, bad_dice = point_mask_losses(-good, target, num_points=200, generator=torch.Generator().manual_seed(0))
    assert good_bce < 0.5 < bad_bce and good_dice < 0.2 < bad_dice
    logits.requires_grad_(True)
    bce, dice = point_mask_losses(logits, gt, num_points=50)
    (bce + dice).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0

