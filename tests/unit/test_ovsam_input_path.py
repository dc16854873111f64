"""Open-Vocabulary SAM's input path against independent computations written here (cv2, PIL,
numpy, scipy; never the sambench function under test): the official mmdet/mmcv test pipeline
(resize, normalisation, padding, point and box prompts, mask post-processing, RoI boxes) and
the LSJ training pipeline (resize rule, interpolation, masks, flip). methods/ovsam/README.md has the table."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sambench.testing import SHARED_DATA, TINY_SAM, needs_shared
from PIL import Image
from pycocotools.coco import COCO
from scipy.ndimage import correlate

from sambench.backbones.sam import SamBackbone
from sambench.data.base import read_image
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench_plugins.methods.ovsam.augment import large_scale_jitter, resize_masks_nearest
from sambench_plugins.methods.ovsam.center_points import official_center_points
from sambench_plugins.methods.ovsam.input_frame import eval_pixels, rescale_size
from sambench.registry import DATASETS, METHODS, load_plugins
from sambench.structures import collate

load_plugins()
MEAN, STD = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])


def official_size(h: int, w: int, bound_h: int = 1024, bound_w: int = 1024) -> tuple[int, int]:
    """mmcv.rescale_size written out: factor = min(long bound / long side, short bound / short side)."""
    factor = min(max(bound_h, bound_w) / max(h, w), min(bound_h, bound_w) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def official_canvas(image: np.ndarray) -> np.ndarray:
    """The official test input: cv2 bilinear on uint8, float, (x − mean) / std, zero pad to 1024²."""
    h, w = official_size(*image.shape[:2])
    resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)
    canvas = np.zeros((1024, 1024, 3))
    canvas[:h, :w] = (resized - MEAN) / STD
    return canvas.transpose(2, 0, 1)


def kornia_cascade_point(mask: np.ndarray) -> tuple[int, int]:
    """kornia.contrib.distance_transform (kernel 3, h 0.35) on ~pad(mask), first argmax -> (x, y):
    written from its definition with scipy on the whole padded frame."""
    background = (~np.pad(mask, 1)).astype(np.float64)
    offsets = np.arange(-1, 2)
    kernel = np.exp(-np.hypot(offsets[:, None], offsets[None, :]) / 0.35)
    out, reached = np.zeros_like(background), background.copy()
    for i in range(max(background.shape)):
        response = correlate(reached, kernel, mode="nearest")
        with np.errstate(divide="ignore"):
            cdt = -0.35 * np.log(response)
        new = np.isfinite(cdt) & (cdt > 0)
        if not new.any():
            break
        out[new] = i * 3 // 2 + cdt[new]
        reached[new] = 1.0
    dist = np.round(out[1:-1, 1:-1] * 1e4)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = write_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=3)
    return root, DATASETS.get("coco_ov")(split="eval", root=str(root))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return METHODS.get("ovsam")(sam=SamBackbone(**TINY_SAM), clip={"model": "tiny_rn", "allow_random_init": True},
                                adapter={"depth": 1, "num_heads": 2}, fpn_channels=16, allow_untrained=True).eval()


# ----- evaluation: image -------------------------------------------------------------------------
def test_new_size_is_mmcv_rescale_size():
    assert rescale_size(480, 640) == (768, 1024) and rescale_size(427, 640) == (683, 1024)
    assert rescale_size(640, 426) == (1024, 682) and rescale_size(2000, 100) == (1024, 51)
    # the masks of point prompts are rescaled to the image's (h, w) as a bound: a 102×640 mask
    # becomes 163×1023, one column short of the 163×1024 image (official quirk, kept)
    assert rescale_size(102, 640) == (163, 1024) and rescale_size(102, 640, (163, 1024)) == (163, 1023)
    for h, w in [(333, 500), (1, 7), (1024, 1024), (1500, 999)]:
        assert rescale_size(h, w) == official_size(h, w)


def test_eval_canvas_is_the_official_cv2_canvas_and_what_clip_sees(model, coco):
    _, data = coco
    sample = data[0]
    seen = []
    original = model.clip.stage_features
    model.clip.stage_features = lambda pixels: seen.append(pixels.clone()) or original(pixels)
    try:
        model.predict(collate([sample]))
    finally:
        model.clip.stage_features = original
    expected = torch.from_numpy(official_canvas(sample.image)).float()
    assert seen[0].shape == (1, 3, 1024, 1024) and (seen[0][0] - expected).abs().max() < 1e-5
    pil = eval_pixels(model.sam, sample.image, "pil")[0]  # SamPredictor's PIL path, kept as an option
    assert 0 < (pil - expected).abs().max() <= 1.01 / 57.12


@needs_shared
def test_real_photos_decode_and_resize_as_the_official_pipeline():
    sam = SamBackbone(**TINY_SAM)
    folder = SHARED_DATA / "coco_tiny" / "val2017"
    worst_pil = 0.0
    for file in sorted(folder.glob("*.jpg"))[:6]:
        ours = read_image(file)
        official = cv2.imdecode(np.fromfile(str(file), np.uint8), cv2.IMREAD_COLOR)[..., ::-1]  # mmcv: cv2, BGR -> RGB
        assert np.array_equal(ours, official)
        expected = torch.from_numpy(official_canvas(np.ascontiguousarray(official))).float()
        assert (eval_pixels(sam, ours, "cv2")[0] - expected).abs().max() < 1e-5
        worst_pil = max(worst_pil, float((eval_pixels(sam, ours, "pil")[0] - expected).abs().max()))
    assert 0 < worst_pil <= 1.01 / 57.12  # PIL bilinear vs cv2: at most one grey level


# ----- evaluation: prompts and masks -------------------------------------------------------------
def test_point_prompts_are_kornias_cascade_on_the_rescaled_mask(model, coco):
    _, data = coco
    sample = data[1]
    h, w = sample.size
    ih, iw = official_size(h, w)
    expected = []
    for mask in sample.masks.numpy().astype(np.uint8):
        mh, mw = official_size(h, w, ih, iw)
        resized = cv2.resize(mask, (mw, mh), interpolation=cv2.INTER_NEAREST).astype(bool)
        expected.append(kornia_cascade_point(resized))
    points = official_center_points(sample.masks, (ih, iw))
    assert points[:, 0].tolist() == [list(map(float, p)) for p in expected]
    model.prompt, model.point_rule = "point", "official"
    try:
        sparse, _, _, _, _ = model._eval_prompts(sample)
    finally:
        model.prompt = "box"
    coords = torch.tensor(expected, dtype=torch.float)[:, None]
    labels = torch.ones(len(expected), 1, dtype=torch.long)
    reference, _ = model.sam._raw_sam().prompt_encoder(points=(coords, labels), boxes=None, masks=None)  # + 0.5 inside
    assert torch.allclose(sparse, reference)


def test_small_masks_match_the_cascade_on_the_whole_frame():
    rng = np.random.default_rng(0)
    for _ in range(4):
        mask = np.zeros((40, 56), bool)
        for _ in range(3):
            y, x, r = rng.integers(5, 35), rng.integers(5, 50), rng.integers(3, 9)
            yy, xx = np.ogrid[:40, :56]
            mask |= (yy - y) ** 2 + ((xx - x) * 0.7) ** 2 <= r ** 2
        points = official_center_points(torch.from_numpy(mask)[None], (40, 56))
        assert tuple(points[0, 0].int().tolist()) == kornia_cascade_point(mask)


def test_box_prompts_scale_per_axis_as_mmdet(model, coco):
    _, data = coco
    sample = data[0]
    sparse, _, frame, clip_boxes, _ = model._eval_prompts(sample)
    h, w = sample.size
    ih, iw = official_size(h, w)
    boxes = sample.boxes.double() * torch.tensor([iw / w, ih / h, iw / w, ih / h], dtype=torch.double)
    assert torch.allclose(frame.double(), boxes, atol=1e-4) and torch.allclose(clip_boxes.double(), boxes, atol=1e-4)
    reference, _ = model.sam._raw_sam().prompt_encoder(points=None, boxes=boxes.float(), masks=None)
    assert torch.allclose(sparse, reference, atol=1e-5)


def test_masks_are_post_processed_as_the_official_code(model):
    low_res = torch.randn(3, 1, 256, 256) * 4
    h, w = 333, 500
    ih, iw = official_size(h, w)
    up = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)[..., :ih, :iw]
    official = F.interpolate(up, (h, w), mode="bilinear", align_corners=False).sigmoid() > 0.5
    ours = model.sam.postprocess(low_res, (h, w)) > model.sam.mask_threshold
    assert (ours != official).sum() == 0


def test_roi_boxes_are_mask2bbox_times_4_and_zero_for_an_empty_mask(model):
    low_res = torch.full((2, 1, 256, 256), -1.0)
    low_res[0, 0, 10:20, 30:45] = 1.0
    fallback = model._empty_mask_fallback(None, torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8]]))
    boxes = model._mask_boxes(low_res, fallback)
    mask = low_res[0, 0].numpy() > 0.0
    ys, xs = np.nonzero(mask)
    expected = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) * 4  # mmdet mask2bbox: max + 1
    assert boxes[0].tolist() == expected.tolist() and boxes[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_gt_masks_are_pycocotools_masks(coco):
    root, data = coco
    api = COCO(str(Path(root) / "annotations" / "instances_val2017.json"))
    for k in range(len(data)):
        sample = data[k]
        for mask, ann_id in zip(sample.masks, sample.meta["ann_ids"]):
            assert np.array_equal(mask.numpy(), api.annToMask(api.anns[ann_id]).astype(bool))


# ----- training (LSJ) ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape, ratio, flip", [((48, 64), 0.9, 0.0), ((300, 160), 0.9, 1.0), ((77, 91), 0.55, 0.0)])
def test_jitter_resizes_image_and_masks_as_cv2(shape, ratio, flip):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    masks = torch.from_numpy(rng.random((2, *shape)) > 0.6)
    size = 200
    out, kept, keep = large_scale_jitter(image, masks, size=size, scale_range=(ratio, ratio), flip=flip, min_mask_area=0)
    target = int(size * ratio)  # mmdet RandomResize: scale = int(1024 · r), then keep-ratio rescale
    h, w = official_size(*shape, target, target)
    src = image[:, ::-1] if flip else image
    expected = cv2.resize(np.ascontiguousarray(src).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    assert tuple(out.shape) == (3, h, w) and (out.permute(1, 2, 0).numpy() - expected).__abs__().max() < 1e-2  # float32 coordinate rounding
    mask_src = masks.numpy()[:, :, ::-1] if flip else masks.numpy()
    for m, ref in zip(kept, mask_src):
        assert np.array_equal(m.numpy(), cv2.resize(np.ascontiguousarray(ref).astype(np.uint8), (w, h),
                                                    interpolation=cv2.INTER_NEAREST).astype(bool))
    assert keep.tolist() == [0, 1]


def test_nearest_mask_resize_is_cv2s_rule_where_torch_nearest_is_not():
    rng = np.random.default_rng(2)
    torch_differs = 0
    for _ in range(40):
        h, w, nh, nw = (int(v) for v in rng.integers(5, 400, 4))
        mask = rng.random((h, w)) > 0.5
        expected = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
        assert np.array_equal(resize_masks_nearest(torch.from_numpy(mask)[None], (nh, nw))[0].numpy(), expected)
        plain = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(nh, nw), mode="nearest")[0, 0] > 0.5
        torch_differs += not np.array_equal(plain.numpy(), expected)
    assert torch_differs > 0  # why sambench does not use F.interpolate(mode="nearest") for masks


# ----- the baselines (sambench's design; the paper has no code) ---------------------------------
def test_image_crop_is_the_tight_box_stretched_bicubic_as_pil():
    from sambench.backbones.clip import CLIP_MEAN, CLIP_STD
    from sambench_plugins.methods.ovsam.region_crops import mask_crops

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    masks = torch.zeros(1, 90, 130, dtype=torch.bool)
    masks[0, 10:70, 20:115] = True
    crops = mask_crops(image, masks, 64)
    crop = image[10:70, 20:115].astype(np.float32) / 255
    resized = np.stack([np.asarray(Image.fromarray(crop[..., c], mode="F").resize((64, 64), Image.BICUBIC))
                        for c in range(3)])
    expected = (np.clip(resized, 0, 1) - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]
    assert np.abs(crops[0].numpy() - expected).max() < 1e-4


def test_feature_crop_letterbox_is_pil_bicubic_top_left():
    from sambench.backbones.clip import CLIP_MEAN, CLIP_STD, ClipBackbone

    clip = ClipBackbone(model="tiny_rn", allow_random_init=True, dense_size=96)
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    pixels = clip.preprocess(image)[0].numpy()
    h, w = round(50 * 96 / 80), 96
    resized = np.stack([np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255, mode="F")
                                   .resize((w, h), Image.BICUBIC)) for c in range(3)])
    expected = np.zeros((3, 96, 96))
    expected[:, :h, :w] = (np.clip(resized, 0, 1) - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]
    assert np.abs(pixels - expected).max() < 1e-4


def test_baselines_prompt_with_the_same_official_points(coco):
    _, data = coco
    sample = data[1]
    torch.manual_seed(0)
    model = METHODS.get("image_crop")(sam=SamBackbone(**TINY_SAM), clip={"model": "tiny_rn", "allow_random_init": True},
                                      prompt="point")
    seen = []
    original = model._regions
    model._regions = lambda s, e, prompts: seen.append(prompts) or original(s, e, prompts)
    model.predict(collate([sample]))
    ih, iw = official_size(*sample.size)
    expected = official_center_points(sample.masks, (ih, iw))[:, 0]  # checked against scipy above
    frame = model.sam.transform.apply_coords_torch(seen[0]["points"], sample.size)  # what SAM's encoder receives
    assert torch.allclose(frame[:, 0], expected, atol=1e-3)
