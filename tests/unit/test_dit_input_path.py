"""DIT's input path against independent computations written here (PIL + numpy), following the
official code (wysnzzzz/DIT ``datasets/transforms.py``): the uint8 PIL image is resized with PIL
bilinear to ``(round(h·r), round(w·r))``, r = 512 / long side, then /255, (x − mean)/std in
float32 and zero padding at ``round(d/2 − 0.1)``. Nothing here calls sambench's resize,
normalise or pad to build the expected values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from sambench_plugins.methods.dit.pil_steps import Augmentation, draw_augmentation
from sambench_plugins.methods.dit.preprocess import ReferringPreprocessor, swap_left_right
from sambench.testing import REPO, SHARED_DATA

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
CPU = torch.device("cpu")


def photos() -> list[np.ndarray]:
    """Real photos: the bundled PerSeg sample (square, also cropped to odd non-square shapes,
    so both upscaling and downscaling run) and the COCO sample when ../shared is there."""
    files = sorted((REPO / "datasets" / "perseg_sample" / "Images").glob("*/0[01].jpg"))
    images = [np.array(Image.open(f).convert("RGB")) for f in files]
    images += [images[0][:211, :317], images[1][13:, :97], images[2][:, 5:306]]
    coco = sorted((SHARED_DATA / "coco_tiny" / "val2017").glob("*.jpg"))[:4] if SHARED_DATA.is_dir() else []
    return images + [np.array(Image.open(f).convert("RGB")) for f in coco]


def expected_geometry(h: int, w: int, long_side: int, size: int = 512):
    ratio = float(long_side / float(max(h, w)))
    nh, nw = round(h * ratio), round(w * ratio)
    return nh, nw, round((size - nh) / 2.0 - 0.1), round((size - nw) / 2.0 - 0.1)


def expected_canvas(picture: Image.Image, top: int, left: int, size: int = 512) -> np.ndarray:
    """PIL RGB (resized) -> 3×size×size, numpy only."""
    x = np.asarray(picture, np.float32) / np.float32(255.0)
    x = (x - MEAN) / STD
    canvas = np.zeros((3, size, size), np.float32)
    canvas[:, top : top + x.shape[0], left : left + x.shape[1]] = x.transpose(2, 0, 1)
    return canvas


def test_evaluation_canvas_equals_pil_on_real_photos():
    pre = ReferringPreprocessor(size=512)
    checked = 0
    for image in photos():
        h, w = image.shape[:2]
        nh, nw, top, left = expected_geometry(h, w, 512)
        resized = Image.fromarray(image).resize((nw, nh), Image.BILINEAR)
        expected = expected_canvas(resized, top, left)
        canvas, where = pre.evaluation(image, CPU)
        assert (where.top, where.left, where.height, where.width) == (top, left, nh, nw)
        assert canvas.shape == (1, 3, 512, 512) and canvas.dtype == torch.float32
        np.testing.assert_allclose(canvas[0].numpy(), expected, rtol=0, atol=1e-6)
        checked += 1
    assert checked >= 9


def test_tensor_pipeline_is_an_option_and_not_the_official_canvas():
    """The documented ``tensor`` option really differs (float resize, no uint8 rounding)."""
    image = photos()[3]
    official, _ = ReferringPreprocessor(size=512).evaluation(image, CPU)
    tensor, _ = ReferringPreprocessor(size=512, pipeline="tensor").evaluation(image, CPU)
    gap = float((official - tensor).abs().max())
    assert 1e-3 < gap < 0.5


@pytest.mark.parametrize(("h", "w", "nh", "nw", "top", "left"), [
    (427, 640, 342, 512, 85, 0),    # 341.6 rounds up; (512-342)/2 - 0.1 = 84.9 -> 85
    (640, 427, 512, 342, 0, 85),
    (5, 1024, 2, 512, 255, 0),      # 2.5 -> 2 (Python rounds half to even); 254.9 -> 255
    (7, 1024, 4, 512, 254, 0),      # 3.5 -> 4; 253.9 -> 254
    (320, 320, 512, 512, 0, 0),     # upscaling
])
def test_placement_rounding_by_hand(h, w, nh, nw, top, left):
    canvas, where = ReferringPreprocessor(size=512).evaluation(np.zeros((h, w, 3), np.uint8), CPU)
    assert (where.height, where.width, where.top, where.left) == (nh, nw, top, left)


def reference_training(image, mask, aug: Augmentation, size=512):
    """The official training order, written with PIL directly: resize image and 0/255 mask ->
    enhancers (brightness, contrast, saturation by index) -> blur -> flip -> /255, normalise, pad
    (``Augmentation`` only holds the random choices)."""
    h, w = image.shape[:2]
    nh, nw, top, left = expected_geometry(h, w, aug.long_side, size)
    picture = Image.fromarray(image).resize((nw, nh), Image.BILINEAR)
    target = Image.fromarray(mask.astype(np.uint8) * 255).resize((nw, nh), Image.BILINEAR)
    if aug.jitter:
        order, factors = aug.jitter
        enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
        for i in order:
            picture = enhancers[i](picture).enhance(factors[i])
    if aug.blur:
        picture = picture.filter(ImageFilter.GaussianBlur(radius=aug.blur))
    if aug.flip:
        picture, target = picture.transpose(Image.FLIP_LEFT_RIGHT), target.transpose(Image.FLIP_LEFT_RIGHT)
    mask_canvas = np.zeros((1, size, size), np.float32)
    mask_canvas[0, top : top + nh, left : left + nw] = np.asarray(target, np.float32) / np.float32(255.0)
    return expected_canvas(picture, top, left, size), mask_canvas


@pytest.mark.parametrize("aug", [
    Augmentation(long_side=512),
    Augmentation(long_side=416, jitter=((2, 0, 1), (1.31, 0.72, 1.12)), flip=True),
    Augmentation(long_side=320, jitter=((1, 2, 0), (0.65, 1.38, 0.81))),
    Augmentation(long_side=448, jitter=((0, 1, 2), (1.2, 0.9, 1.0)), blur=1.3, flip=True),  # the paper's blur option
])
def test_training_steps_follow_the_official_order(aug):
    image = photos()[6]  # 211 x 317 real photo crop
    mask = np.zeros(image.shape[:2], bool)
    mask[40:150, 30:120] = True
    mask[60:70, 200:300] = True
    pre = ReferringPreprocessor(size=512)
    canvas, target = pre.official_training(image, torch.from_numpy(mask), aug)
    expected_canvas_, expected_target = reference_training(image, mask, aug)
    np.testing.assert_allclose(canvas.numpy(), expected_canvas_, rtol=0, atol=1e-6)
    np.testing.assert_allclose(target.numpy(), expected_target, rtol=0, atol=1e-7)
    if aug.long_side != 320:  # 317 -> 320 barely resizes; 416 and 512 do
        assert ((target > 0) & (target < 1)).any()  # PIL's bilinear mask resize gives soft edges
    assert torch.allclose(target * 255, (target * 255).round(), atol=1e-4)


def test_jittering_after_resizing_is_not_the_same_as_before():
    """The order matters (contrast uses the image mean): resize-then-jitter is what is checked."""
    image = photos()[6]
    aug = Augmentation(long_side=320, jitter=((1,), (1.0, 1.4, 1.0)))
    small = Image.fromarray(image).resize((320, 213), Image.BILINEAR)
    after = np.asarray(ImageEnhance.Contrast(small).enhance(1.4), np.int16)
    before = np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(1.4).resize((320, 213), Image.BILINEAR), np.int16)
    assert np.abs(after - before).max() > 0
    canvas, _ = ReferringPreprocessor(size=512).official_training(image, torch.zeros(image.shape[:2], dtype=torch.bool), aug)
    nh, nw, top, left = expected_geometry(*image.shape[:2], 320)
    np.testing.assert_allclose(canvas.numpy(), expected_canvas(Image.fromarray(after.astype(np.uint8)), top, left), atol=1e-6)


def test_random_draws_match_the_official_distribution():
    torch.manual_seed(0)
    sides = [512, 480, 448, 416, 384, 352, 320]
    draws = [draw_augmentation(long_sides=sides, jitter_p=0.8, strength=0.4, blur_p=0.0, blur_sigma=(0.1, 2.0), flip_p=0.5)
             for _ in range(3000)]
    assert {d.long_side for d in draws} == set(sides)
    jittered = [d.jitter for d in draws if d.jitter]
    assert abs(len(jittered) / 3000 - 0.8) < 0.03
    assert abs(sum(d.flip for d in draws) / 3000 - 0.5) < 0.03
    assert {order for order, _ in jittered} == {(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)}
    factors = np.array([f for _, f in jittered])
    assert factors.min() >= 0.6 and factors.max() <= 1.4 and abs(factors.mean() - 1.0) < 0.02
    assert all(d.blur is None for d in draws)


def test_expression_flip_official_substring_and_words_option():
    assert swap_left_right("the leftmost guy, not the right one") == "the rightmost guy, not the left one"
    assert swap_left_right("bright shirt on the left") == "bleft shirt on the right"  # official quirk
    assert swap_left_right("Left guy LEFT leftmost bright", "words") == "Right guy RIGHT leftmost bright"


def test_training_flip_swaps_the_expression_and_mirrors_both(monkeypatch):
    pre = ReferringPreprocessor(size=64, min_side=64, color_jitter=0.0, flip=1.0)
    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :16] = 255
    mask = torch.zeros(32, 64, dtype=torch.bool)
    mask[:, :16] = True
    canvas, target, text = pre.training(image, mask, "white part on the left", CPU)
    assert text == "white part on the right"
    assert canvas.shape == (1, 3, 64, 64) and target.shape == (1, 1, 64, 64)
    assert target[0, 0, 32, 60] == 1 and target[0, 0, 32, 3] == 0
    assert target[0, 0, :16].sum() == 0  # centre padding: rows above the image are empty


def test_dit_prediction_uses_the_official_canvas():
    """The model's predict path feeds exactly the independent canvas to the network."""
    from test_dit_model import build
    from sambench.structures import Batch, Sample

    model = build("dit_layerwise")
    seen = []
    model.logits = lambda pixels, texts: seen.append(pixels) or torch.zeros(len(texts), 1, 512, 512)
    image = photos()[7]
    sample = Sample(index=0, image=image, masks=torch.zeros(1, *image.shape[:2], dtype=torch.bool), texts=["a cat"])
    model.predict(Batch([sample]))
    h, w = image.shape[:2]
    nh, nw, top, left = expected_geometry(h, w, 512)
    np.testing.assert_allclose(seen[0][0].numpy(), expected_canvas(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), top, left), atol=1e-6)



def bilinear_half_pixel(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """H×W -> out_h×out_w bilinear with half-pixel centres and edge clamping (what
    ``F.interpolate(bilinear, align_corners=False)`` computes), in float64 numpy."""
    h, w = x.shape

    def taps(n_out, n_in):
        pos = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, None)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        return lo, np.minimum(lo + 1, n_in - 1), pos - lo

    y0, y1, fy = taps(out_h, h)
    x0, x1, fx = taps(out_w, w)
    top = x[y0][:, x0] * (1 - fx) + x[y0][:, x1] * fx
    bottom = x[y1][:, x0] * (1 - fx) + x[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_prediction_post_processing_by_hand():
    """sigmoid > 0.35 on the 512² logits, crop the image region, bilinear to the original size,
    > 0 (official ``test.py``), recomputed with numpy."""
    from test_dit_model import build
    from sambench.structures import Batch, Sample

    model = build("dit_layerwise")
    torch.manual_seed(1)
    blobs = torch.randn(1, 1, 9, 9) * 3
    logits = torch.nn.functional.interpolate(blobs, size=(512, 512), mode="bicubic")  # smooth input logits
    model.logits = lambda pixels, texts: logits
    image = np.zeros((333, 500, 3), np.uint8)
    sample = Sample(index=0, image=image, masks=torch.zeros(1, 333, 500, dtype=torch.bool), texts=["x"])
    mask = model.predict(Batch([sample]))[0].masks[0].numpy()
    nh, nw, top, left = expected_geometry(333, 500, 512)
    binary = (1 / (1 + np.exp(-logits[0, 0].double().numpy())) > 0.35).astype(np.float64)
    expected = bilinear_half_pixel(binary[top : top + nh, left : left + nw], 333, 500) > 0
    assert mask.shape == (333, 500) and 0.2 < expected.mean() < 0.8
    assert (mask != expected).sum() == 0
