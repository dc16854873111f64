"""SSPrompt input path (methods/ssprompt/README.md, "Input path" table; sambench's design, no official
code): SAM's canvas, the default spatial prompts, CLIP's letterbox, mask pooling on CLIP's grid,
labels into SAM's low-res frame and scores back to the image, each against PIL + numpy here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sambench.testing import REPO, SHARED_DATA, TINY_SAM, needs_shared
from input_path_reference import bilinear, sam_canvas, sam_new_size
from PIL import Image

from sambench.backbones.clip import ClipBackbone
from sambench.backbones.sam import SamBackbone
from sambench.data.base import read_image
from sambench_plugins.methods.ssprompt.defaults import grid_points, spatial_defaults
from sambench_plugins.methods.ssprompt.frames import low_res_to_image
from sambench_plugins.methods.ssprompt.mask_classifier import pooled_mask_features
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Sample

load_plugins()
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # open_clip's OPENAI_DATASET_MEAN
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
ADE = SHARED_DATA / "ade20k" / "ADEChallengeData2016"
CITYSCAPES_FRAME = SHARED_DATA / "cityscapes" / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
PHOTO = REPO / "datasets" / "perseg_sample" / "Images" / "duck_toy" / "01.jpg"


@pytest.fixture(scope="module")
def method():
    torch.manual_seed(0)
    return METHODS.get("zero_shot_prompts")(sam=SamBackbone(**TINY_SAM), class_names=["road", "car", "sky"],
                                            clip={"model": "tiny", "allow_random_init": True}, grid=3, flip=0.0)


def photos() -> list[np.ndarray]:
    """A real photo as a 2:1 (Cityscapes-like) and an ADE20K-like 3:4 crop, odd sizes."""
    image = read_image(PHOTO)
    return [np.ascontiguousarray(image[:161]), np.ascontiguousarray(image[:239, :319])]


# ----- SAM side --------------------------------------------------------------------------------
def test_sam_canvas_equals_pil_numpy(method):
    for image in photos():
        assert np.abs(method.sam.preprocess(image)[0].numpy() - sam_canvas(image)).max() <= 1e-6


@needs_shared
def test_sam_canvas_of_the_cityscapes_frame(method):
    image = read_image(CITYSCAPES_FRAME)  # 128×256, enlarged ×4
    assert np.abs(method.sam.preprocess(image)[0].numpy() - sam_canvas(image)).max() <= 1e-6


def test_default_spatial_prompts_by_hand(method):
    """Grid cell centres of the aspect's image region in SAM's 1024 frame, each encoded as SAM
    encodes a lone positive point: [PE(p + 0.5) + label-1 embedding, not-a-point embedding]."""
    grid, aspect = 3, 2.0
    xs, ys = (np.arange(grid) + 0.5) * 1024 / grid, (np.arange(grid) + 0.5) * (1024 / aspect) / grid
    points = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)  # row-major: y outer, x inner
    assert np.allclose(grid_points(grid, aspect).numpy(), points, atol=1e-4)
    encoder = method.sam._raw_sam().prompt_encoder
    gauss = encoder.pe_layer.positional_encoding_gaussian_matrix.double().numpy()
    coords = 2 * ((points + 0.5) / 1024) - 1
    phase = 2 * np.pi * coords @ gauss
    pe = np.concatenate([np.sin(phase), np.cos(phase)], axis=-1)
    point_token = pe + encoder.point_embeddings[1].weight.double().numpy()
    padding_token = np.broadcast_to(encoder.not_a_point_embed.weight.double().numpy(), point_token.shape)
    expected = np.stack([point_token, padding_token], axis=1)
    assert np.abs(spatial_defaults(method.sam, grid, aspect).double().numpy() - expected).max() < 1e-5
    assert np.abs(method.spatial.defaults.double().numpy() - expected).max() < 1e-5


# ----- CLIP side -------------------------------------------------------------------------------
def clip_canvas(image: np.ndarray, size: int) -> np.ndarray:
    """Ours, written with PIL: long side -> ``size`` (round(), half to even), bicubic with
    antialiasing on the float image x / 255 (PIL mode F: no uint8 rounding), clamp to [0, 1],
    (x − mean) / std with CLIP's constants, zeros bottom/right."""
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
    channels = [np.asarray(Image.fromarray(image[..., c].astype(np.float32) / 255).resize((nw, nh), Image.BICUBIC))
                for c in range(3)]
    resized = np.clip(np.stack(channels, -1), 0, 1)
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[:nh, :nw] = (resized - CLIP_MEAN) / CLIP_STD
    return canvas.transpose(2, 0, 1)


def test_clip_letterbox_equals_pil_float_bicubic():
    """Within torch's float32 antialiased-bicubic kernel error (~2e-5 in 0–1 units); the uint8
    PIL path (open_clip's own transform resizes the uint8 image) is a different design."""
    clip = ClipBackbone(model="tiny", allow_random_init=True, dense_size=224)
    for image in photos() + [read_image(PHOTO)]:
        ours = clip.preprocess(image)[0].numpy()
        assert ours.shape == (3, 224, 224) and np.abs(ours - clip_canvas(image, 224)).max() < 1e-4
    image = photos()[0]
    nh, nw = 113, 224  # round(161 · 224 / 320) = round(112.7)
    uint8 = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BICUBIC)).astype(np.float32) / 255
    assert np.abs((uint8 - CLIP_MEAN) / CLIP_STD - clip.preprocess(image)[0, :, :nh, :nw].numpy().transpose(1, 2, 0)).max() > 1e-2


def test_clip_new_size_rounds_half_to_even():
    clip = ClipBackbone(model="tiny", allow_random_init=True, dense_size=224)
    image = np.zeros((5, 448, 3), np.uint8)  # 2.5 rows -> round() = 2 (SAM's rule would give 3)
    ones = clip.preprocess(image + 255)[0, 0].numpy() != 0
    assert ones.any(axis=1).sum() == 2 and ones.any(axis=0).sum() == 224


def test_mask_pooling_on_clip_grid_equals_numpy():
    """SAM's 256² low-res logits -> CLIP's g×g grid (bilinear, no antialias: the same top-left
    frame), sigmoid, weighted mean of the features, L2-normalised."""
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 256, 256)) * 4).astype(np.float32)
    features = rng.normal(size=(8, 14, 14)).astype(np.float32)
    weights = 1 / (1 + np.exp(-bilinear(logits, (14, 14))))
    pooled = np.einsum("qhw,dhw->qd", weights, features) / weights.sum((1, 2))[:, None]
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    ours = pooled_mask_features(torch.from_numpy(logits), torch.from_numpy(features)).numpy()
    assert np.abs(ours - expected).max() < 1e-5


# ----- labels into SAM's low-res frame, scores back -----------------------------------------------
def numpy_low_res_labels(labels: np.ndarray) -> np.ndarray:
    """Cell (r, c) of the 256² frame: centre (4r + 2, 4c + 2) in the 1024 frame; inside the
    resized image -> the original pixel under it, else 255."""
    h, w = labels.shape
    h_in, w_in = sam_new_size(h, w)
    out = np.full((256, 256), 255, np.int64)
    for r in range(256):
        for c in range(256):
            y, x = 4 * r + 2, 4 * c + 2
            if y < h_in and x < w_in:
                out[r, c] = labels[int(np.floor(y * h / h_in)), int(np.floor(x * w / w_in))]
    return out


def blocky_labels(h: int, w: int, seed: int = 0) -> np.ndarray:
    coarse = np.random.default_rng(seed).integers(0, 19, size=(h // 7 + 1, w // 7 + 1))
    return np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.NEAREST)).astype(np.int64)


def test_labels_into_the_low_res_frame_equal_numpy(method):
    for labels in (blocky_labels(300, 401), blocky_labels(128, 256, 1), blocky_labels(1023, 511, 2)):
        ours = method._target(torch.from_numpy(labels), labels.shape)
        assert ours.shape == (256, 256) and np.array_equal(ours.numpy(), numpy_low_res_labels(labels))


@needs_shared
def test_ade20k_labels_into_the_low_res_frame_equal_numpy(method):
    labels = np.asarray(Image.open(ADE / "annotations/validation/ADE_val_00000001.png")).astype(np.int64)
    assert labels.shape == (512, 683)  # 768×1024 in SAM's frame: 192×256 cells
    assert np.array_equal(method._target(torch.from_numpy(labels), labels.shape).numpy(), numpy_low_res_labels(labels))


def numpy_scores_to_image(scores: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Bilinear at each original pixel centre: low-res coordinate (i + 0.5) · h_in / (4 H) − 0.5,
    clamped to the 256² frame (as F.interpolate clamps)."""
    (h, w), (h_in, w_in) = original_size, sam_new_size(*original_size)

    def taps(n, n_in):
        src = np.clip((np.arange(n) + 0.5) * n_in / (4 * n) - 0.5, 0, 255)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, 255), src - i0

    r0, r1, a = taps(h, h_in)
    c0, c1, b = taps(w, w_in)
    rows = scores[:, r0] * (1 - a)[:, None] + scores[:, r1] * a[:, None]
    return rows[:, :, c0] * (1 - b) + rows[:, :, c1] * b


def test_scores_back_to_the_image_equal_numpy(method, monkeypatch):
    rng = np.random.default_rng(3)
    scores = rng.random((3, 256, 256)).astype(np.float32)
    for size in [(300, 401), (128, 256), (161, 320)]:
        expected = numpy_scores_to_image(scores.astype(np.float64), size)
        ours = low_res_to_image(torch.from_numpy(scores), sam_new_size(*size), size).numpy()
        assert ours.shape == (3, *size) and np.abs(ours - expected).max() < 1e-5
    image = photos()[0]
    monkeypatch.setattr(method, "scores", lambda embedding, features: torch.from_numpy(scores))
    [prediction] = method.predict(Batch([Sample(index=0, image=image)]))
    expected = numpy_scores_to_image(scores.astype(np.float64), image.shape[:2])
    top2 = np.sort(expected, axis=0)[-2:]
    decided = top2[1] - top2[0] > 1e-5
    assert decided.mean() > 0.99
    assert np.array_equal(prediction.semantic.numpy()[decided], expected.argmax(0)[decided])
