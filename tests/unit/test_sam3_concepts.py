"""SAM 3's per-task prompt construction and output conversion (``methods/sam3/concepts.py``),
each function against a hand computation or an independent numpy/torch computation, and the
``sam3`` method's adapters on the tiny random SAM 3 (fields, shapes, and the box protocol's and
semantic adapter's bookkeeping across concept chunks recomputed from the wrapper's own outputs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sambench  # noqa: F401  (makes ``sambench_plugins`` importable)
from sambench import tasks
from sambench.backbones.sam3 import Sam3ConceptModel
from sambench.errors import ConfigError
from sambench.prompts import mask_boxes
from sambench.structures import Batch, Reference, Sample
from sambench_plugins.methods.sam3.concepts import (
    BestConcept, BestPerPrompt, TopDetections, box_matches, chunks, concept_text, concept_texts, instance_score_map,
    point_matches, top_instance,
)
from sambench_plugins.methods.sam3.sam3 import Sam3ZeroShot


# ============================================================================ concept texts
def test_concept_text_verbatim_rule_keeps_the_name():
    for name in ("car_(automobile)", "couch,sofa", "a_or_b", "Traffic Light"):
        assert concept_text(name) == name
        assert concept_text(name, None, "name") == name


def test_concept_text_first_synonym_rule_on_lvis_like_names():
    assert concept_text("car_(automobile)", rule="first_synonym") == "car (automobile)"
    assert concept_text("couch,sofa", rule="first_synonym") == "couch"
    assert concept_text("a_or_b", rule="first_synonym") == "a"
    assert concept_text("bun/roll", rule="first_synonym") == "bun"
    assert concept_text("Traffic Light", rule="first_synonym") == "traffic light"


def test_concept_text_a_synonym_list_wins_over_either_rule():
    for rule in ("name", "first_synonym"):
        assert concept_text("couch,sofa", ["settee", "sofa"], rule) == "settee"
    # an empty list is no list: the rule applies
    assert concept_text("couch,sofa", [], "first_synonym") == "couch"


def test_concept_texts_one_per_class_id():
    names = ["car_(automobile)", "couch,sofa", "a_or_b"]
    assert concept_texts(names) == names
    assert concept_texts(names, rule="first_synonym") == ["car (automobile)", "couch", "a"]
    assert concept_texts(names, [["auto"], [], ["b", "a"]], "first_synonym") == ["auto", "couch", "b"]
    assert concept_texts(names, [["auto"], [], ["b", "a"]], "name") == ["auto", "couch,sofa", "b"]
    assert concept_texts([]) == []


# ============================================================================ chunks
@pytest.mark.parametrize("count, size, expected", [
    (0, 3, []),
    (6, 3, [(0, 3), (3, 6)]),
    (7, 3, [(0, 3), (3, 6), (6, 7)]),
    (2, 5, [(0, 2)]),
    (3, 1, [(0, 1), (1, 2), (2, 3)]),
])
def test_chunks(count, size, expected):
    assert chunks(count, size) == [range(a, b) for a, b in expected]


# ============================================================================ box protocol
def test_box_matches_is_iou_times_score_per_gt_concept_instance():
    gt = torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10]])
    boxes = torch.tensor([
        [[0.0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 20, 10]],   # concept 0
        [[10.0, 0, 20, 10], [0, 0, 5, 10], [0, 5, 10, 10]],   # concept 1
    ])
    scores = torch.tensor([[0.9, 0.6, 0.3], [0.8, 0.5, 0.4]])
    # IoUs by hand: [5,0,15,10] overlaps each GT box by 50 of a 150 union -> 1/3; [0,0,20,10]
    # holds each GT box (100 of 200) -> 1/2; the half boxes lie inside GT 0 (50 of 100) -> 1/2
    iou = torch.tensor([
        [[1.0, 1 / 3, 0.5], [0.0, 0.5, 0.5]],
        [[0.0, 1 / 3, 0.5], [1.0, 0.0, 0.0]],
    ])
    out = box_matches(scores, boxes, gt)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out, iou * scores)
    torch.testing.assert_close(out[0, 0], torch.tensor([0.9, 0.2, 0.15]))
    torch.testing.assert_close(out[1, 1], torch.tensor([0.8, 0.0, 0.0]))
    assert box_matches(scores, boxes, torch.zeros(0, 4)).shape == (0, 2, 3)


# ============================================================================ point protocol
def test_point_matches_at_the_image_resolution_reads_the_pixel_itself():
    height, width = 5, 7
    logits = torch.arange(2 * 3 * height * width, dtype=torch.float32).view(2, 3, height, width) / 50 - 2
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.7, 1.0]])
    points = torch.tensor([[0.0, 0.0], [6.0, 4.0], [3.0, 2.0]])
    out = point_matches(scores, logits, points, (height, width))
    assert out.shape == (3, 2, 3)
    for g, (x, y) in enumerate(points.long().tolist()):
        for c in range(2):
            for n in range(3):
                expected = scores[c, n].item() / (1 + math.exp(-logits[c, n, y, x].item()))
                assert out[g, c, n].item() == pytest.approx(expected, abs=1e-6)


def test_point_matches_on_a_linear_ramp_upsampled_twice():
    """Logits ``a·j + b·i + c`` on a 4×6 grid read at pixel centres of an 8×12 image: the source
    position of pixel x is ``(x + 0.5) / 2 - 0.5`` clamped to the grid (bilinear is exact on a ramp)."""
    h, w, a, b, c0 = 4, 6, 0.5, -0.25, 0.1
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    logits = (a * j + b * i + c0)[None, None]
    points = torch.tensor([[0.0, 0.0], [3.0, 2.0], [11.0, 7.0], [6.0, 5.0]])
    # by hand: x=0 -> -0.25 -> 0; x=3 -> 1.25; x=11 -> 5.25 -> 5; x=6 -> 2.75; y=2 -> 0.75; y=7 -> 3.25 -> 3; y=5 -> 2.25
    source = [(0.0, 0.0), (1.25, 0.75), (5.0, 3.0), (2.75, 2.25)]
    out = point_matches(torch.tensor([[0.5]]), logits, points, (2 * h, 2 * w))
    for g, (u, v) in enumerate(source):
        expected = 0.5 / (1 + math.exp(-(a * u + b * v + c0)))
        assert out[g, 0, 0].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("low, size", [((6, 7), (12, 14)), ((8, 8), (13, 21)), ((9, 9), (5, 6))])
def test_point_matches_equals_resize_then_read(low, size):
    """The independent reference: resize the logits to the image (``interpolate``, bilinear,
    ``align_corners=False``), sigmoid, read the pixel, multiply by the score."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, *low, generator=generator) * 3
    scores = torch.rand(2, 3, generator=generator)
    height, width = size
    points = torch.tensor([[0, 0], [width - 1, height - 1], [width // 2, height // 3], [1, height - 2]], dtype=torch.float32)
    resized = F.interpolate(logits, size, mode="bilinear", align_corners=False).sigmoid()  # (2, 3, H, W)
    expected = torch.stack([resized[:, :, int(y), int(x)] for x, y in points.tolist()]) * scores
    torch.testing.assert_close(point_matches(scores, logits, points, size), expected, atol=1e-6, rtol=1e-5)


# ============================================================================ running bests
def _identified_logits(concepts: range, instances: int, size=(2, 3)) -> torch.Tensor:
    """(Cc, N, h, w) logits filled with ``100 · class id + instance`` (which instance is it)."""
    return torch.stack([torch.stack([torch.full(size, 100.0 * c + n) for n in range(instances)]) for c in concepts])


def test_best_per_prompt_keeps_the_best_instance_over_chunks():
    first, second = range(0, 2), range(2, 4)
    matches1 = torch.zeros(2, 2, 3)
    matches1[0, 1, 2] = 0.5   # prompt 0: concept 1, instance 2
    matches1[1, 0, 1] = 0.4   # prompt 1: concept 0, instance 1
    matches1[1, 1, 0] = 0.3
    scores1 = torch.tensor([[0.11, 0.12, 0.13], [0.21, 0.22, 0.23]])
    matches2 = torch.zeros(2, 2, 3)
    matches2[0, 0, 0] = 0.5   # prompt 0: only a tie (the earlier instance stays)
    matches2[0, 1, 1] = 0.2
    matches2[1, 1, 0] = 0.7   # prompt 1: improves, concept 3 (second of the chunk), instance 0
    scores2 = torch.tensor([[0.31, 0.32, 0.33], [0.41, 0.42, 0.43]])

    best = BestPerPrompt(2)
    best.update(matches1, first, scores1, _identified_logits(first, 3))
    torch.testing.assert_close(best.value, torch.tensor([0.5, 0.4]))
    assert best.class_id.tolist() == [1, 0]
    best.update(matches2, second, scores2, _identified_logits(second, 3))
    torch.testing.assert_close(best.value, torch.tensor([0.5, 0.7]))
    assert best.class_id.tolist() == [1, 3]
    assert best.class_id.dtype == torch.long
    torch.testing.assert_close(best.score, torch.tensor([0.23, 0.41]))
    assert best.mask_logits.shape == (2, 2, 3)
    assert (best.mask_logits[0] == 100 * 1 + 2).all() and (best.mask_logits[1] == 100 * 3 + 0).all()


def test_best_per_prompt_without_prompts_stays_empty():
    best = BestPerPrompt(0)
    best.update(torch.zeros(0, 2, 3), range(2), torch.rand(2, 3), torch.rand(2, 3, 4, 4))
    assert best.mask_logits is None and best.class_id.shape == (0,)


def _brute_force_top(scores: np.ndarray, k: int, threshold: float) -> np.ndarray:
    """Flat (concept-major) indices of the top ``k`` scores above ``threshold``; ties: lower index."""
    flat = scores.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    return np.array([i for i in order if flat[i] > threshold][:k], dtype=np.int64)


@pytest.mark.parametrize("seed, k, threshold, split", [
    (0, 5, 0.3, 3), (1, 4, 0.0, 2), (2, 50, 0.5, 1), (3, 3, 0.85, 4), (4, 6, 0.2, 5),
])
def test_top_detections_equals_a_brute_force_top_k(seed, k, threshold, split):
    rng = np.random.default_rng(seed)
    concepts, n = 5, 4
    scores = rng.integers(0, 10, (concepts, n)).astype(np.float32) / 10  # many ties
    boxes = rng.random((concepts, n, 4)).astype(np.float32)
    logits = _identified_logits(range(concepts), n)
    top = TopDetections(k, threshold)
    for part in (range(0, split), range(split, concepts)):
        top.update(part, torch.from_numpy(scores[part.start:part.stop]), torch.from_numpy(boxes[part.start:part.stop]),
                   logits[part.start:part.stop])
    kept = _brute_force_top(scores, k, threshold)
    assert top.score.tolist() == pytest.approx(scores.reshape(-1)[kept].tolist())
    assert top.class_id.tolist() == (kept // n).tolist()
    torch.testing.assert_close(top.boxes, torch.from_numpy(boxes.reshape(-1, 4)[kept]).reshape(-1, 4))
    assert top.mask_logits.shape == (len(kept), 2, 3)
    assert top.mask_logits[:, 0, 0].tolist() == [100.0 * (i // n) + i % n for i in kept]


def test_top_detections_with_nothing_above_the_threshold():
    top = TopDetections(3, 0.9)
    top.update(range(2), torch.full((2, 3), 0.5), torch.rand(2, 3, 4), torch.rand(2, 3, 4, 4))
    assert len(top.score) == 0 and top.boxes.shape == (0, 4) and top.mask_logits.shape == (0, 4, 4)


def test_top_instance_is_the_first_highest():
    assert top_instance(torch.tensor([0.1, 0.7, 0.7, 0.2])) == 1
    assert top_instance(torch.tensor([0.9, 0.1])) == 0
    assert top_instance(torch.tensor([0.1, 0.2, 0.3])) == 2


def test_instance_score_map_matches_explicit_loops():
    generator = torch.Generator().manual_seed(0)
    scores, logits = torch.rand(2, 3, generator=generator), torch.randn(2, 3, 4, 5, generator=generator) * 2
    out = instance_score_map(scores, logits)
    assert out.shape == (2, 4, 5)
    for c in range(2):
        for y in range(4):
            for x in range(5):
                expected = max(scores[c, n].item() / (1 + math.exp(-logits[c, n, y, x].item())) for n in range(3))
                assert out[c, y, x].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("splits", [(2,), (1, 3), (4,), ()])
def test_best_concept_is_the_argmax_over_all_concepts_lower_id_on_ties(splits):
    rng = np.random.default_rng(len(splits))
    maps = rng.integers(0, 4, (5, 6, 7)).astype(np.float32)  # few values: many ties across chunks
    best = BestConcept((6, 7))
    bounds = (0, *splits, 5)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        best.update(range(start, stop), torch.from_numpy(maps[start:stop]))
    assert best.label.dtype == torch.long
    np.testing.assert_array_equal(best.label.numpy(), np.argmax(maps, axis=0))
    np.testing.assert_array_equal(best.value.numpy(), maps.max(axis=0))


# ============================================================================ the method on the tiny model
NAMES = ["cat", "dog", "car_(automobile)", "couch,sofa", "tree"]
SIZE = (40, 56)


@pytest.fixture(scope="module")
def sam():
    return Sam3ConceptModel(name="sam3_tiny", variant="tiny")


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def _instances_sample() -> Sample:
    boxes = torch.tensor([[2.0, 3, 20, 30], [25, 5, 50, 22], [10, 20, 40, 38]])
    masks = torch.zeros(3, *SIZE, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        m[y0:y1, x0:x1] = True
    return Sample(index=7, image=_image(0), masks=masks, boxes=boxes, class_ids=torch.tensor([0, 2, 4]),
                  class_names=list(NAMES), meta={"image_id": 12, "ann_ids": [1, 2, 3]})


def _chunked_grounding(sam, image: np.ndarray, texts: list[str], parts: list[list[int]]):
    """The wrapper called by hand: scores (C, N), boxes (C, N, 4), mask logits, semantic logits."""
    encoded = sam.encode_image(sam.preprocess(image)[None])
    text = sam.encode_texts(texts)
    outs = [sam.ground(encoded, text, torch.tensor(part)) for part in parts]
    return tuple(torch.cat([getattr(out, field) for out in outs])
                 for field in ("scores", "boxes", "mask_logits", "semantic_logits"))


def test_box_protocol_picks_the_best_score_times_iou_instance_over_three_chunks(sam):
    sample = _instances_sample()
    method = Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, protocol="box", concept_batch=2)
    (pred,) = method.predict(Batch([sample]))
    assert pred.index == 7 and pred.masks.shape == (3, *SIZE) and pred.masks.dtype == torch.bool
    assert pred.class_ids.dtype == torch.long and pred.scores.shape == (3,)
    assert pred.instance_names == ["12_1", "12_2", "12_3"]

    scores, boxes, mask_logits, _ = _chunked_grounding(sam, sample.image, NAMES, [[0, 1], [2, 3], [4]])
    scores, pixel = scores.numpy(), sam.boxes_to_image(boxes, SIZE).numpy()  # (C, N), (C, N, 4)
    n = scores.shape[1]
    for g, (x0, y0, x1, y1) in enumerate(sample.boxes.tolist()):
        ix = np.clip(np.minimum(x1, pixel[..., 2]) - np.maximum(x0, pixel[..., 0]), 0, None)
        iy = np.clip(np.minimum(y1, pixel[..., 3]) - np.maximum(y0, pixel[..., 1]), 0, None)
        area = (pixel[..., 2] - pixel[..., 0]) * (pixel[..., 3] - pixel[..., 1])
        iou = ix * iy / ((x1 - x0) * (y1 - y0) + area - ix * iy)
        c, i = divmod(int(np.argmax(iou * scores)), n)
        assert int(pred.class_ids[g]) == c
        assert float(pred.scores[g]) == pytest.approx(float(scores[c, i]), abs=1e-6)
        expected_mask = sam.masks_to_image(mask_logits[c, i][None], SIZE)[0] > 0.5
        assert torch.equal(pred.masks[g], expected_mask)
        assert pred.instance_labels[g] == {"class_id": c, "class_name": NAMES[c], "score": pytest.approx(float(scores[c, i]))}


def test_point_protocol_reads_the_mask_at_the_interior_point(sam):
    sample = _instances_sample()
    method = Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, protocol="point", concept_batch=2)
    (pred,) = method.predict(Batch([sample]))
    assert pred.masks.shape == (3, *SIZE) and pred.masks.dtype == torch.bool
    scores, _, mask_logits, _ = _chunked_grounding(sam, sample.image, NAMES, [[0, 1], [2, 3], [4]])
    resized = F.interpolate(mask_logits.float(), SIZE, mode="bilinear", align_corners=False).sigmoid()  # (C, N, H, W)
    n = scores.shape[1]
    for g, mask in enumerate(sample.masks.numpy()):
        # the rectangles' interior point (farthest from the boundary, first in raster order)
        rows, cols = np.nonzero(mask)
        y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        depth = np.minimum.reduce(np.meshgrid(np.arange(y1 - y0) + 1, np.arange(x1 - x0) + 1, indexing="ij")
                                  + np.meshgrid(np.arange(y1 - y0)[::-1] + 1, np.arange(x1 - x0)[::-1] + 1, indexing="ij"))
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        value = (resized[:, :, y0 + y, x0 + x] * scores).numpy()
        c, i = divmod(int(np.argmax(value)), n)
        assert int(pred.class_ids[g]) == c
        assert float(pred.scores[g]) == pytest.approx(float(scores[c, i]), abs=1e-6)


def test_detector_free_protocol_detections(sam):
    sample = _instances_sample()
    method = Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, protocol="detector_free", concept_batch=2,
                          max_detections=7)
    (pred,) = method.predict(Batch([sample]))
    assert pred.masks is None and isinstance(pred.detections, list)
    assert 0 < len(pred.detections) <= 7
    scores = [d.score for d in pred.detections]
    assert scores == sorted(scores, reverse=True)
    all_scores = _chunked_grounding(sam, sample.image, NAMES, [[0, 1], [2, 3], [4]])[0].flatten()
    assert scores == pytest.approx(all_scores.sort(descending=True).values[:7].tolist(), abs=1e-6)
    for detection in pred.detections:
        assert 0 <= detection.class_id < len(NAMES)
        # SAM 3's boxes may reach past the image (cxcywh from the decoder, unclipped): only 4 floats
        assert len(detection.bbox) == 4 and all(isinstance(v, float) for v in detection.bbox)
        assert detection.mask.shape == SIZE and detection.mask.dtype == torch.bool


def test_referring_gives_one_mask(sam):
    sample = Sample(index=0, image=_image(1), masks=torch.zeros(1, *SIZE, dtype=torch.bool), texts=["the dog on the left"])
    (pred,) = Sam3ZeroShot(sam=sam, task=tasks.REFERRING).predict(Batch([sample]))
    assert pred.masks.shape == (1, *SIZE) and pred.masks.dtype == torch.bool
    out = sam.ground(sam.encode_image(sam.preprocess(sample.image)[None]), sam.encode_texts(sample.texts), torch.tensor([0]))
    best = int(np.argmax(out.scores[0].numpy()))
    assert torch.equal(pred.masks[0], sam.masks_to_image(out.mask_logits[0, best][None], SIZE)[0] > 0.5)


def test_personalize_gives_one_mask_and_encodes_each_reference_once(sam, monkeypatch):
    mask_rgb = np.zeros((*SIZE, 3), dtype=np.uint8)
    mask_rgb[8:30, 10:40] = (128, 0, 0)
    reference = Reference(image=_image(2), mask_rgb=mask_rgb, name="cat/00")
    calls = []
    encode = sam.encode_exemplars
    monkeypatch.setattr(sam, "encode_exemplars", lambda *args, **kwargs: calls.append(args[1]) or encode(*args, **kwargs))
    method = Sam3ZeroShot(sam=sam, task=tasks.PERSONALIZE)
    samples = [Sample(index=i, image=_image(3 + i), masks=torch.zeros(1, *SIZE, dtype=torch.bool), references=[reference])
               for i in range(2)]
    predictions = method.predict(Batch(samples))
    predictions += method.predict(Batch([samples[0]]))
    assert len(calls) == 1
    # the exemplar box: the mask's pixel box x 10..40, y 8..30 in a 56×40 image, as normalised cxcywh
    torch.testing.assert_close(calls[0], torch.tensor([[25 / 56, 19 / 40, 30 / 56, 22 / 40]]))
    for pred in predictions:
        assert pred.masks.shape == (1, *SIZE) and pred.masks.dtype == torch.bool
    assert torch.equal(predictions[0].masks, predictions[2].masks)


@pytest.mark.parametrize("semantic_scores", ["semantic_head", "instances"])
def test_semantic_label_map(sam, semantic_scores):
    sample = Sample(index=0, image=_image(5), semantic=torch.zeros(SIZE, dtype=torch.long), class_names=list(NAMES))
    method = Sam3ZeroShot(sam=sam, task=tasks.SEMANTIC_FEW_SHOT, concept_batch=2, semantic_scores=semantic_scores)
    (pred,) = method.predict(Batch([sample]))
    assert pred.semantic.shape == SIZE and pred.semantic.dtype == torch.int64
    assert 0 <= int(pred.semantic.min()) and int(pred.semantic.max()) < len(NAMES)
    # per-pixel argmax over all concepts, recomputed from the wrapper's outputs
    scores, _, mask_logits, semantic_logits = _chunked_grounding(sam, sample.image, NAMES, [[0, 1], [2, 3], [4]])
    if semantic_scores == "semantic_head":
        logits = semantic_logits
    else:  # max over instances of score × mask probability, resized as logits
        probability = np.max(scores.numpy()[..., None, None] / (1 + np.exp(-mask_logits.numpy())), axis=1)
        logits = torch.logit(torch.from_numpy(probability).clamp(1e-6, 1 - 1e-6))
    probabilities = F.interpolate(logits[:, None], SIZE, mode="bilinear", align_corners=False)[:, 0].sigmoid().numpy()
    top2 = np.sort(probabilities, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5  # pixels whose winner no rounding can change
    assert clear.mean() > 0.95
    np.testing.assert_array_equal(pred.semantic.numpy()[clear], np.argmax(probabilities, axis=0)[clear])


@pytest.mark.parametrize("options", [{"protocol": "bogus"}, {"concept_batch": 0}, {"max_detections": 0},
                                     {"semantic_scores": "bogus"}, {"concept_names": "bogus"}, {"exemplar_text": "x"}])
def test_invalid_options_are_config_errors(sam, options):
    with pytest.raises(ConfigError):
        Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, **options)


def test_verified_concepts_ground_only_the_classes_the_lvis_evaluation_scores(sam, monkeypatch):
    sample = _instances_sample()  # annotated classes 0, 2, 4
    sample.meta["neg_class_ids"] = [1]
    grounded = []
    ground = sam.ground
    monkeypatch.setattr(sam, "ground", lambda image, texts, ids, **kw: grounded.append(ids.tolist()) or ground(image, texts, ids, **kw))
    method = Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, protocol="detector_free", concept_batch=2,
                          max_detections=9, concepts="verified")
    (pred,) = method.predict(Batch([sample]))
    assert grounded == [[0, 1], [2, 4]]  # class 3 is neither annotated nor verified absent
    scores = _chunked_grounding(sam, sample.image, NAMES, [[0, 1], [2, 4]])[0]  # rows: classes 0, 1, 2, 4
    expected = scores.flatten().sort(descending=True).values[:9]
    assert [d.score for d in pred.detections] == pytest.approx(expected.tolist(), abs=1e-6)
    assert {d.class_id for d in pred.detections} <= {0, 1, 2, 4}


def test_verified_concepts_need_a_federated_dataset_and_the_detector_free_protocol(sam):
    method = Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, protocol="detector_free", concepts="verified")
    with pytest.raises(ConfigError, match="needs a federated dataset"):
        method.predict(Batch([_instances_sample()]))  # COCO-like: no neg_class_ids
    with pytest.raises(ConfigError, match="concepts=verified is for method.protocol=detector_free"):
        Sam3ZeroShot(sam=sam, task=tasks.OPEN_VOCAB_INSTANCE, protocol="box", concepts="verified")


def test_an_empty_reference_mask_is_a_clear_error(sam):
    from sambench.errors import DatasetError

    empty = Reference(image=_image(3), mask_rgb=np.zeros((*SIZE, 3), np.uint8), name="dog/00")
    sample = Sample(index=0, image=_image(4), masks=torch.zeros(1, *SIZE, dtype=torch.bool), references=[empty])
    method = Sam3ZeroShot(sam=sam, task=tasks.PERSONALIZE)
    with pytest.raises(DatasetError, match="reference dog/00: its mask is empty"):
        method.predict(Batch([sample]))


@pytest.mark.parametrize("exemplar_text, expected", [("visual", "visual"), ("class_name", "cat statue")])
def test_personalize_text_beside_the_exemplar(sam, monkeypatch, exemplar_text, expected):
    mask_rgb = np.zeros((*SIZE, 3), dtype=np.uint8)
    mask_rgb[8:30, 10:40] = (128, 0, 0)
    reference = Reference(image=_image(2), mask_rgb=mask_rgb, name="cat_statue/00")
    texts = []
    encode = sam.encode_texts
    monkeypatch.setattr(sam, "encode_texts", lambda names: texts.append(list(names)) or encode(names))
    method = Sam3ZeroShot(sam=sam, task=tasks.PERSONALIZE, exemplar_text=exemplar_text)
    method.predict(Batch([Sample(index=0, image=_image(6), masks=torch.zeros(1, *SIZE, dtype=torch.bool),
                                 references=[reference])]))
    assert texts == [[expected]]


def _video_sample(frames: int = 3) -> Sample:
    """Frames with two objects (ids 1 and 3) in frame 0."""
    images = [_image(20 + t) for t in range(frames)]
    first = np.zeros(SIZE, np.uint8)
    first[5:20, 4:25] = 1
    first[22:36, 30:50] = 3
    references = [Reference(image=images[0], mask_rgb=np.repeat((255 * (first == k)).astype(np.uint8)[..., None], 3, -1),
                            name=f"seq/{k}") for k in (1, 3)]
    labels = torch.zeros(frames, *SIZE, dtype=torch.uint8)
    labels[0] = torch.from_numpy(first)
    return Sample(index=0, image=images[0], frames=images, frame_labels=labels, references=references,
                  meta={"object_ids": [1, 3], "name": "seq"})


def test_video_labels_are_the_per_pixel_best_object_above_one_half(sam):
    sample = _video_sample()
    method = Sam3ZeroShot(sam=sam, task=tasks.VIDEO_OBJECT)
    (pred,) = method.predict(Batch([sample]))
    assert pred.frame_labels.shape == (3, *SIZE) and pred.frame_labels.dtype == torch.uint8
    assert torch.equal(pred.frame_labels[0], sample.frame_labels[0])
    text = sam.encode_texts(["visual", "visual"])
    for t in (1, 2):  # by hand: each object's top instance on the frame, its probability map, argmax with 0.5 for background
        image = sam.encode_image(sam.preprocess(sample.frames[t])[None])
        probs = []
        for k, ref in enumerate(sample.references):
            box = mask_boxes(torch.as_tensor(ref.mask)[None])
            exemplar = sam.encode_exemplars(sam.encode_image(sam.preprocess(ref.image)[None]), sam.boxes_to_exemplars(box, SIZE))
            out = sam.ground(image, text, torch.tensor([k]), exemplars=exemplar)
            probs.append(sam.masks_to_image(out.mask_logits[0, int(out.scores[0].argmax())][None], SIZE)[0])
        probs = torch.stack(probs)
        expected = torch.where(probs.max(0).values > 0.5, torch.tensor([1, 3])[probs.argmax(0)], torch.tensor(0))
        assert torch.equal(pred.frame_labels[t].long(), expected)


def test_one_image_as_the_reference_of_two_concepts_gets_two_exemplars(sam, monkeypatch):
    calls = []
    encode = sam.encode_exemplars
    monkeypatch.setattr(sam, "encode_exemplars", lambda *args, **kwargs: calls.append(args[1]) or encode(*args, **kwargs))
    method = Sam3ZeroShot(sam=sam, task=tasks.PERSONALIZE)
    for box in ((8, 30, 10, 40), (2, 12, 3, 20)):
        mask_rgb = np.zeros((*SIZE, 3), dtype=np.uint8)
        mask_rgb[box[0]:box[1], box[2]:box[3]] = 255
        reference = Reference(image=_image(2), mask_rgb=mask_rgb, name="val2014/COCO_val2014_000000000001.jpg")
        method.predict(Batch([Sample(index=0, image=_image(5), masks=torch.zeros(1, *SIZE, dtype=torch.bool),
                                     references=[reference])]))
    assert len(calls) == 2 and not torch.equal(calls[0], calls[1])
