"""PerSAM / PerSAM-F on video (methods/persam/video.py) against the official ``persam_video.py`` /
``persam_video_f.py``: the prompt helpers against numpy re-implementations of the official
functions, and whole 4-frame, 2-object videos against the official loop written out in this
file with upstream ``segment_anything.SamPredictor`` (its numpy API, as the scripts call it) on
the same tiny weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from sambench.testing import TINY_SAM

from sambench import tasks
from sambench.backbones.sam import SamBackbone
from sambench.errors import ConfigError
from sambench_plugins.methods.persam.prior import densest_cell, reference_cells
from sambench_plugins.methods.persam.video import (
    PerSAMFVideoOptions, PerSAMVideo, PerSAMVideoOptions, box_prompt, first_pick, merge_logits, next_box_masks,
    topk_points,
)
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Reference, Sample

load_plugins()


@pytest.fixture(scope="module")
def sam():
    return SamBackbone(**TINY_SAM)


def toy_video(frames=4, h=48, w=64, seed=0):
    """Two coloured rectangles moving over noise: (frames list, labels T×H×W uint8)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for t in range(frames):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        label = np.zeros((h, w), np.uint8)
        label[8 + t:24 + t, 6 + 2 * t:26 + 2 * t] = 1
        label[26:40 - t, 34:58] = 2
        image[label == 1], image[label == 2] = (230, 40, 40), (30, 200, 60)
        images.append(image)
        labels.append(label)
    return images, np.stack(labels)


def video_sample(frames, labels, ids=(1, 2)):
    """A sample as the davis2017 dataset builds it (references: 255 · one-hot in 3 channels)."""
    refs = [Reference(frames[0], np.repeat((labels[0] == k).astype(np.uint8)[..., None] * 255, 3, -1), name=f"toy/{k}")
            for k in ids]
    return Sample(index=0, image=frames[0], frames=frames, frame_labels=torch.from_numpy(labels), references=refs,
                  meta={"object_ids": list(ids), "concept": "toy"})


# ----- the official helpers, re-implemented with numpy ------------------------------------------------
def official_get_box_prompt(mask: np.ndarray, threshold: int):
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    rmin, rmax = np.where(rows)[0][[0, -1]]
    cmin, cmax = np.where(cols)[0][[0, -1]]
    cmin = 0 if cmin - threshold <= 0 else cmin - threshold
    rmin = 0 if rmin - threshold <= 0 else rmin - threshold
    cmax = mask.shape[1] if cmax + threshold >= mask.shape[1] else cmax + threshold
    rmax = mask.shape[0] if rmax + threshold >= mask.shape[0] else rmax + threshold
    return np.array([[(cmin + cmax) // 2, (rmin + rmax) // 2]]), np.array([cmin, rmin, cmax, rmax])


def official_point_selection(sim: np.ndarray, topk: int):
    """topk of the flat map, descending -> (x = column, y = row) int64, labels all 1 (on maps
    without ties; the loop below uses the script's torch version)."""
    flat = sim.reshape(-1)
    index = np.argsort(-flat, kind="stable")[:topk]
    return np.stack([index % sim.shape[1], index // sim.shape[1]], axis=-1).astype(np.int64), np.array([1] * topk)


def official_large_pick(masks: np.ndarray) -> int:
    return int(np.argmax(np.array([np.sum(masks[0]), np.sum(masks[1]), np.sum(masks[2])], dtype=np.uint8), axis=0))


def test_box_prompt_equals_official_get_box_prompt():
    rng = np.random.default_rng(0)
    cases = [(slice(0, 5), slice(0, 7)), (slice(40, 48), slice(55, 64)), (slice(12, 30), slice(9, 41)),
             (slice(3, 4), slice(62, 63)), (slice(0, 48), slice(0, 64))]
    masks = []
    for rows, cols in cases:
        mask = np.zeros((48, 64), bool)
        mask[rows, cols] = True
        masks.append(mask)
    masks += [rng.random((48, 64)) > 0.995 for _ in range(20)]
    for mask in masks:
        if not mask.any():
            continue
        for margin in (0, 10, 3):
            centre, box = box_prompt(torch.from_numpy(mask), margin)
            expected_centre, expected_box = official_get_box_prompt(mask, margin)
            assert centre.tolist() == expected_centre.tolist() and box[0].tolist() == expected_box.tolist()
            assert centre.dtype == box.dtype == torch.int64
    assert box_prompt(torch.zeros(5, 5, dtype=torch.bool), 10) is None
    # clipped to W and H, not W - 1: the box can end one pixel outside the image
    assert box_prompt(torch.from_numpy(masks[1]), 10)[1][0].tolist() == [45, 30, 64, 48]


def test_topk_points_in_official_order():
    rng = np.random.default_rng(1)
    for shape, k in [((48, 64), 2), ((30, 17), 1), ((5, 9), 4)]:
        sim = rng.normal(size=shape).astype(np.float32)
        expected, _ = official_point_selection(sim, k)
        assert topk_points(torch.from_numpy(sim), k).tolist() == expected.tolist()


def test_first_pick_wraps_areas_modulo_256():
    masks = np.zeros((3, 20, 20), bool)
    masks[0, :15] = True  # 300 -> 44
    masks[1, :10] = True  # 200
    masks[2, :5] = True  # 100
    scores = torch.tensor([0.1, 0.2, 0.9])
    assert first_pick(torch.from_numpy(masks), scores, "uint8_area") == official_large_pick(masks) == 1
    assert first_pick(torch.from_numpy(masks), scores, "area") == 0
    assert first_pick(torch.from_numpy(masks), scores, "score") == 2
    masks[1, :] = True  # 400 -> 144: ties and wraps
    assert first_pick(torch.from_numpy(masks), scores, "uint8_area") == official_large_pick(masks)
    rng = np.random.default_rng(2)
    for _ in range(30):
        masks = rng.random((3, 30, 40)) > rng.random((3, 1, 1))
        assert first_pick(torch.from_numpy(masks), scores, "uint8_area") == official_large_pick(masks)


def test_densest_cell():
    mask = torch.zeros(240, 320, dtype=torch.bool)
    mask[100:102, 100:103] = True  # rows 320..326.4, cols 320..329.6 at 1024 wide: cell (20, 20)
    assert densest_cell(mask, (768, 1024)) == (20, 20)
    mask[0, 319] = True  # one pixel in the last column: cell (0, 63)
    assert densest_cell(mask, (768, 1024)) == (20, 20)
    only = torch.zeros(240, 320, dtype=torch.bool)
    only[239, 319] = True
    assert densest_cell(only, (768, 1024)) == (47, 63)  # the last image cell, not the padding below


def test_merge_equals_official_concat_argmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 20, 30)).astype(np.float32)
    logits[1, :3] = logits[0, :3]  # ties between objects: the first wins
    logits[:, 5, :] = 0.0  # ties with the background: background
    expected = np.argmax(np.concatenate([np.zeros((1, 20, 30), np.uint8), logits], 0), axis=0).astype(np.uint8)
    ours = merge_logits(list(torch.from_numpy(logits)), (20, 30))
    assert ours.dtype == torch.uint8 and np.array_equal(ours.numpy(), expected)
    assert merge_logits([], (4, 5)).eq(0).all()


def test_next_boxes_official_shift_vs_keep_last():
    labels = torch.zeros(6, 6, dtype=torch.uint8)
    labels[0, 0], labels[5, 5] = 2, 3  # object 1 vanished
    previous = [torch.ones(6, 6, dtype=torch.bool)] * 3
    official = next_box_masks(labels, previous, "official")  # all_to_onehot(pred, unique non-zero labels)
    assert len(official) == 2 and torch.equal(official[0], labels == 2) and torch.equal(official[1], labels == 3)
    kept = next_box_masks(labels, previous, "keep_last_box")
    assert len(kept) == 3 and kept[0] is previous[0] and torch.equal(kept[1], labels == 2)


def test_options_are_checked():
    assert PerSAMVideoOptions.from_config(None) == PerSAMVideoOptions(topk=2, mask_value=215, box_margin=10)
    assert PerSAMFVideoOptions.from_config({}).topk == 1 and PerSAMFVideoOptions.from_config({}).iterations == 800
    with pytest.raises(ConfigError, match="first_pick"):
        PerSAMVideoOptions.from_config({"first_pick": "largest"})
    with pytest.raises(ConfigError, match="unknown"):
        PerSAMVideoOptions.from_config({"iterations": 3})  # PerSAM does not fit anything
    with pytest.raises(ConfigError, match="lost_objects"):
        PerSAMFVideoOptions.from_config({"lost_objects": "drop"})


def test_method_tasks_and_image_default(sam):
    method = METHODS.get("persam")(sam=sam)
    assert method.TASK == tasks.PERSONALIZE and METHODS.get("persam").TASKS == (tasks.PERSONALIZE, tasks.VIDEO_OBJECT)
    assert "task" in METHODS.get("persam_f").ROOT_KWARGS and "run_dir" in METHODS.get("persam_f").ROOT_KWARGS


# ----- the official loop, written out with upstream SamPredictor ---------------------------------------
def official_target_features(predictor, frame0, gt0, exp=215):
    """persam_video(_f).py's first frame: per object the mask (R = exp · one-hot, G = B = 0)
    through set_image's mask path (apply_image, Sam.preprocess), bilinear to 64×64, R > 0;
    (max / 2 + mean / 2) of the features, L2-normalised."""
    predictor.set_image(frame0)
    feat = predictor.features.squeeze().permute(1, 2, 0)
    targets = []
    for mask in gt0:
        obj_mask = np.concatenate([(mask * exp)[..., None], np.zeros((*mask.shape, 2), mask.dtype)], axis=2)
        resized = torch.as_tensor(predictor.transform.apply_image(obj_mask)).permute(2, 0, 1).contiguous()[None]
        cells = F.interpolate(predictor.model.preprocess(resized), size=feat.shape[0:2], mode="bilinear").squeeze()[0]
        fore = feat[cells > 0]
        target = (torch.max(fore, dim=0)[0] / 2 + fore.mean(0) / 2).unsqueeze(0)
        targets.append(target / target.norm(dim=-1, keepdim=True))
    return targets


def official_similarity(predictor, target):
    test_feat = predictor.features.squeeze()
    c, h, w = test_feat.shape
    test_feat = (test_feat / test_feat.norm(dim=0, keepdim=True)).reshape(c, h * w)
    sim = F.interpolate((target @ test_feat).reshape(1, 1, h, w), scale_factor=4, mode="bilinear")
    return predictor.model.postprocess_masks(sim, predictor.input_size, predictor.original_size).squeeze()


def official_torch_point_selection(mask_sim, topk):
    """The script's own ``point_selection`` (torch ``topk``: on the tied values of an upsampled
    map its order is PyTorch's, which the numpy version above does not reproduce)."""
    w, h = mask_sim.shape
    topk_xy = mask_sim.flatten(0).topk(topk)[1]
    topk_x = (topk_xy // h).unsqueeze(0)
    topk_y = topk_xy - topk_x * h
    return torch.cat((topk_y, topk_x), dim=0).permute(1, 0).numpy(), np.array([1] * topk)


def official_prompts(predictor, target, box_mask, topk):
    sim = official_similarity(predictor, target)
    xy, labels = official_torch_point_selection(sim, topk)
    centre, box = official_get_box_prompt(box_mask, 10)
    return np.concatenate((xy, centre), axis=0), np.concatenate([labels, [1]], axis=0), box


def box_of(mask):
    y, x = np.nonzero(mask)
    return np.array([x.min(), y.min(), x.max(), y.max()])


def official_persam_frame(predictor, xy, labels, box):
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box[None, :], multimask_output=True)
    ic = official_large_pick(masks)
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, mask_input=logits[ic:ic + 1],
                                              multimask_output=True)
    ic = np.argmax(scores)
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box_of(masks[ic])[None, :],
                                              mask_input=logits[ic:ic + 1], multimask_output=True, return_logits=True)
    return masks[np.argmax(scores)]


def official_persam_f_frame(predictor, xy, labels, box, w):
    """persam_video_f.py's per-object decoding with the (2, 1) weight parameter ``w``."""
    weight = torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0)
    weight_np = weight.detach().numpy()
    high, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box[None, :],
                                             multimask_output=True, return_logits=True)
    masks = high > predictor.model.mask_threshold
    mask = ((torch.from_numpy(high) * weight.unsqueeze(-1)).sum(0) > 0).detach().numpy()
    logit = (logits * weight_np[..., None]).sum(0)
    scores = scores * weight_np[0]
    if not mask.any():
        mask = masks[np.argmax(scores)]
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box_of(mask)[None, :],
                                              mask_input=logit[None, :, :], multimask_output=True)
    ic = np.argmax(scores)
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box_of(masks[ic])[None, :],
                                              mask_input=logits[ic:ic + 1], multimask_output=True, return_logits=True)
    return masks[np.argmax(scores)]


def official_fit(predictor, target, gt_mask, topk, iterations, lr=4e-4):
    """persam_video_f.py's training of one object's Mask_Weights on the first frame (the frozen
    decoder's output is the same every iteration, so it is computed once here)."""
    xy, labels, box = official_prompts(predictor, target, gt_mask, topk)
    high, _, _ = predictor.predict(point_coords=xy, point_labels=labels, box=box[None, :], multimask_output=True,
                                   return_logits=True)
    logits_high = torch.from_numpy(high).flatten(1)
    train_mask = torch.tensor(gt_mask > 0).float().unsqueeze(0).flatten(1)
    w = torch.nn.Parameter(torch.ones(2, 1) / 3)
    optimizer = torch.optim.AdamW([w], lr=lr, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
    for _ in range(iterations):
        weight = torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0)
        mixed = (logits_high * weight).sum(0).unsqueeze(0)
        prob = mixed.sigmoid()
        dice = (1 - (2 * (prob * train_mask).sum(-1) + 1) / (prob.sum(-1) + train_mask.sum(-1) + 1)).sum()
        ce = F.binary_cross_entropy_with_logits(mixed, train_mask, reduction="none")
        p_t = prob * train_mask + (1 - prob) * (1 - train_mask)
        focal = ((0.25 * train_mask + 0.75 * (1 - train_mask)) * ce * (1 - p_t) ** 2).mean(1).sum()
        loss = dice + focal
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    return w.detach()


def official_all_to_onehot(pred):
    present = np.unique(pred)
    return [(pred == value).astype(np.uint8) for value in present[present != 0]]


def official_video(predictor, frames, labels, topk, weights=None):
    """The scripts' main loop for one video: label maps of frames 1..T-1."""
    gt0 = [(labels[0] == k).astype(np.uint8) for k in np.unique(labels[0]) if k != 0]
    targets = official_target_features(predictor, frames[0], gt0)
    input_boxes, out = gt0, []
    for frame in frames[1:]:
        predictor.set_image(frame)
        concat = np.zeros((1, *labels.shape[1:]), dtype=np.uint8)
        for j in range(min(len(targets), len(input_boxes))):
            xy, point_labels, box = official_prompts(predictor, targets[j], input_boxes[j], topk)
            if weights is None:
                logit = official_persam_frame(predictor, xy, point_labels, box)
            else:
                logit = official_persam_f_frame(predictor, xy, point_labels, box, weights[j])
            concat = np.concatenate((concat, logit[None]), axis=0)
        pred = np.argmax(concat, axis=0).astype(np.uint8)
        out.append(pred)
        input_boxes = official_all_to_onehot(pred)
    return np.stack(out)


@pytest.fixture(scope="module")
def predictor(sam):
    return SamPredictor(sam._raw_sam())


def test_target_features_equal_the_official_mask_path(sam, predictor):
    frames, labels = toy_video()
    gt0 = [(labels[0] == k).astype(np.uint8) for k in (1, 2)]
    official = official_target_features(predictor, frames[0], gt0)
    tracker = PerSAMVideo(sam=sam, options=PerSAMVideoOptions())
    embedding = sam.embed_images([frames[0]]).embedding[0]
    for mask, expected in zip(gt0, official):
        assert torch.equal(tracker.target_feature(embedding, mask > 0, "toy"), expected)
    assert tracker.fallbacks == 0


def test_persam_video_equals_the_official_loop(sam, predictor):
    frames, labels = toy_video()
    official = official_video(predictor, frames, labels, topk=2)
    method = METHODS.get("persam")(sam=sam, task=tasks.VIDEO_OBJECT)
    [prediction] = method.predict(Batch([video_sample(frames, labels)]))
    ours = prediction.frame_labels
    assert ours.shape == (4, 48, 64) and ours.dtype == torch.uint8 and prediction.fallbacks == 0
    assert np.array_equal(ours[0].numpy(), labels[0])  # frame 0: the given annotation
    assert np.array_equal(ours[1:].numpy(), official)
    assert all(set(np.unique(o)) == {0, 1, 2} for o in official)  # both objects tracked throughout


def test_persam_video_maps_positions_to_the_given_ids(sam):
    frames, labels = toy_video(frames=2)
    relabelled = np.where(labels == 1, 5, np.where(labels == 2, 9, 0)).astype(np.uint8)
    method = METHODS.get("persam")(sam=sam, task=tasks.VIDEO_OBJECT)
    [a] = method.predict(Batch([video_sample(frames, labels)]))
    [b] = method.predict(Batch([video_sample(frames, relabelled, ids=(5, 9))]))
    expected = torch.where(a.frame_labels == 1, 5, torch.where(a.frame_labels == 2, 9, 0)).to(torch.uint8)
    assert torch.equal(b.frame_labels, expected)


def test_persam_f_video_fits_as_official_and_tracks_with_the_weights(sam, predictor, tmp_path):
    frames, labels = toy_video()
    iterations = 6
    gt0 = [(labels[0] == k).astype(np.uint8) for k in (1, 2)]
    targets = official_target_features(predictor, frames[0], gt0)
    official_weights = [official_fit(predictor, t, m, topk=1, iterations=iterations) for t, m in zip(targets, gt0)]
    official = official_video(predictor, frames, labels, topk=1, weights=official_weights)

    method = METHODS.get("persam_f")(sam=sam, task=tasks.VIDEO_OBJECT, run_dir=tmp_path, video={"iterations": iterations})
    [prediction] = method.predict(Batch([video_sample(frames, labels)]))
    for k, expected in zip((1, 2), official_weights):
        saved = torch.load(tmp_path / "persam_f_weights" / f"toy_{k}.pt", weights_only=True)["weights"]
        assert torch.allclose(saved, expected[:, 0], rtol=0, atol=1e-7), (saved, expected)
        assert not torch.allclose(saved, torch.full((2,), 1 / 3))  # it did fit
    assert prediction.fallbacks == 0
    assert np.array_equal(prediction.frame_labels[1:].numpy(), official)
    # reloaded weights (no fit) give the same frames; other weights different ones
    short = video_sample(frames[:2], labels[:2])
    reloaded = METHODS.get("persam_f")(sam=sam, task=tasks.VIDEO_OBJECT, weights_dir=str(tmp_path / "persam_f_weights"),
                                       video={"iterations": 0})
    assert torch.equal(reloaded.predict(Batch([short]))[0].frame_labels, prediction.frame_labels[:2])
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    for k in (1, 2):
        torch.save({"weights": torch.tensor([0.9, -0.6])}, other_dir / f"toy_{k}.pt")
    other = METHODS.get("persam_f")(sam=sam, task=tasks.VIDEO_OBJECT, weights_dir=str(other_dir))
    assert not torch.equal(other.predict(Batch([short]))[0].frame_labels, prediction.frame_labels[:2])


def test_lost_object_official_shift_vs_keep_last_box(sam, monkeypatch):
    """Object 1 vanishes in frame 1. Official: frame 2 runs only one object, object 1's feature
    with object 2's box, labelled 1 (object 2 is dropped); keep_last_box: both, own boxes."""
    frames, labels = toy_video(frames=3)
    calls = []

    def fake_segment(self, obj, features, size, points, labels_, box):
        index = next(j for j, o in enumerate(self._objects) if o is obj)
        first_frame = not any(c[0] == 0 for c in calls)
        calls.append((index, box[0].tolist()))
        logits = torch.full(size, -1.0)
        x0, y0, x1, y1 = box[0].tolist()
        if not (index == 0 and first_frame):  # object 1 gives an empty mask in frame 1
            logits[y0 + 10:y1 - 9, x0 + 10:x1 - 9] = 1.0  # the box without its margin
        return logits

    original_objects = PerSAMVideo.objects

    def remember_objects(self, *args):
        self._objects = original_objects(self, *args)
        return self._objects

    monkeypatch.setattr(PerSAMVideo, "segment", fake_segment)
    monkeypatch.setattr(PerSAMVideo, "objects", remember_objects)
    results = {}
    for rule in ("official", "keep_last_box"):
        calls.clear()
        method = METHODS.get("persam")(sam=sam, task=tasks.VIDEO_OBJECT, video={"lost_objects": rule})
        [prediction] = method.predict(Batch([video_sample(frames, labels)]))
        results[rule] = (list(calls), prediction.frame_labels)
    _, object2_box = official_get_box_prompt(labels[0] == 2, 10)
    _, object1_box = official_get_box_prompt(labels[0] == 1, 10)
    official_calls, official_labels = results["official"]
    assert [c[0] for c in official_calls] == [0, 1, 0]  # frame 2: one object only
    assert official_calls[2][1] == official_calls[1][1] == object2_box.tolist()  # object 1 with object 2's box
    assert set(official_labels[2].unique().tolist()) == {0, 1}  # object 2's region now labelled 1
    kept_calls, kept_labels = results["keep_last_box"]
    assert [c[0] for c in kept_calls] == [0, 1, 0, 1]
    assert kept_calls[2][1] == object1_box.tolist() and kept_calls[3][1] == object2_box.tolist()
    assert set(kept_labels[2].unique().tolist()) == {0, 1, 2}


def test_object_without_foreground_cell_falls_back(sam):
    """A 1-pixel object in a 240×320 frame leaves no 64×64 cell > 0 (the official code takes the
    mean of nothing: NaN); the strongest cell stands in and is counted."""
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(2)]
    labels = np.zeros((2, 240, 320), np.uint8)
    labels[:, 100, 100] = 1
    labels[:, 150:200, 200:260] = 2
    tracker = PerSAMVideo(sam=sam, options=PerSAMVideoOptions())
    assert not reference_cells(sam, tracker.reference_mask(labels[0] == 1)).any()
    embedding = sam.embed_images([frames[0]]).embedding[0]
    feature = tracker.target_feature(embedding, labels[0] == 1, "toy/1")
    assert tracker.fallbacks == 1 and torch.isfinite(feature).all() and feature.shape == (1, 256)
    assert torch.allclose(feature.norm(), torch.tensor(1.0))
    cell = 100 * 1024 // 320 // 16  # the pixel (centre 100.5 · 3.2 = 321.6) lies in cell 20 of 64
    assert torch.allclose(feature[0], F.normalize(embedding[:, cell, cell], dim=0), atol=1e-6)
    [prediction] = METHODS.get("persam")(sam=sam, task=tasks.VIDEO_OBJECT).predict(Batch([video_sample(frames, labels)]))
    assert prediction.fallbacks >= 1 and prediction.frame_labels.shape == (2, 240, 320)
