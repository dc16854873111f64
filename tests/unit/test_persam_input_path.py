"""PerSAM / PerSAM-F input path (methods/persam/README.md, "Input path" table): each row against an
independent computation (PIL + numpy in ``input_path_reference``), on the bundled PerSeg photos,
and the official flow written out with upstream ``SamPredictor`` (its numpy API, as the official
``persam.py`` / ``persam_f.py`` call it)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sambench.testing import REPO, SHARED_DATA, TINY_SAM, needs_shared
from input_path_reference import (
    SAM_MEAN, SAM_STD, bilinear, real_photo_crops, sam_canvas, sam_new_size, sam_postprocess, scale_coords,
)
from segment_anything import SamPredictor

from sambench.backbones.sam import SamBackbone
from sambench.data.base import read_image
from sambench_plugins.methods.persam.prior import guidance, location_prior, mask_box, reference_cells, similarity_map
from sambench_plugins.methods.persam.scale_weights import MaskScaleWeights
from sambench.registry import METHODS, load_plugins
from sambench.structures import Reference, Sample

load_plugins()
SAMPLE = REPO / "datasets" / "perseg_sample"


@pytest.fixture(scope="module")
def sam(tmp_path_factory):
    return SamBackbone(**TINY_SAM, cache_dir=str(tmp_path_factory.mktemp("sam-cache")))


def photo(obj="cat", image_id="00", root=SAMPLE):
    return read_image(root / "Images" / obj / f"{image_id}.jpg")


def mask_rgb(obj="cat", image_id="00", root=SAMPLE):
    return read_image(root / "Annotations" / obj / f"{image_id}.png")


# ----- files ------------------------------------------------------------------------------------
def test_files_read_as_the_official_cv2_imread():
    """Official: ``cv2.cvtColor(cv2.imread(path), COLOR_BGR2RGB)`` for images and masks."""
    cv2 = pytest.importorskip("cv2")
    for obj in ("cat", "colorful_sneaker", "duck_toy"):
        for kind, suffix in (("Images", "jpg"), ("Annotations", "png")):
            path = SAMPLE / kind / obj / f"00.{suffix}"
            official = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            assert np.array_equal(read_image(path), official), path
    official_mask = cv2.cvtColor(cv2.imread(str(SAMPLE / "Annotations/cat/00.png")), cv2.COLOR_BGR2RGB)
    ref = Reference(photo(), mask_rgb())
    assert np.array_equal(ref.mask, official_mask[..., 0] > 0) and ref.mask.any()  # PerSAM-F's GT
    assert set(np.unique(official_mask[..., 0])) == {0, 128}  # palette index 1 = (128, 0, 0)


# ----- image: uint8 PIL resize, normalise, pad -------------------------------------------------
@pytest.mark.parametrize("obj", ["cat", "duck_toy"])
def test_image_canvas_equals_pil_numpy(sam, obj):
    for image in real_photo_crops(photo(obj)):
        ours = sam.preprocess(image)[0].numpy()
        assert ours.shape == (3, 1024, 1024)
        assert np.abs(ours - sam_canvas(image)).max() <= 1e-6, image.shape
        assert sam.input_size(image.shape[:2]) == sam_new_size(*image.shape[:2])
    # the check is sensitive: the float-tensor path (resize after normalising) is not this canvas
    image = real_photo_crops(photo(obj))[1]
    nh, nw = sam_new_size(*image.shape[:2])
    x = (torch.from_numpy(image).permute(2, 0, 1)[None].float() - torch.from_numpy(SAM_MEAN).view(1, 3, 1, 1)) \
        / torch.from_numpy(SAM_STD).view(1, 3, 1, 1)
    tensor_path = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)[0].numpy()
    assert np.abs(tensor_path - sam_canvas(image)[:, :nh, :nw]).max() > 1e-3


@needs_shared
def test_full_size_photo_canvas_equals_pil_numpy(sam):
    image = photo("cat", "01", SHARED_DATA / "perseg")  # 1277², shrunk: PIL's antialiasing matters
    image = np.ascontiguousarray(image[:, :913])
    assert np.abs(sam.preprocess(image)[0].numpy() - sam_canvas(image)).max() <= 1e-6


def test_new_size_rounds_half_up(sam):
    """``int(side · 1024 / long + 0.5)``: 2.5 -> 3 (Python's round() would give 2)."""
    for size, expected in [((5, 2048), (3, 1024)), ((1277, 913), (1024, 732)), ((320, 224), (1024, 717)),
                           ((176, 320), (563, 1024)), ((1024, 2048), (512, 1024))]:
        assert sam.input_size(size) == expected == sam_new_size(*size)
    assert round(5 * 1024 / 2048) == 2


# ----- reference mask: as the image, normalised, padded, 1024 -> 64, R > 0 ----------------------
@pytest.mark.parametrize("obj", ["cat", "colorful_sneaker", "duck_toy"])
def test_reference_cells_equal_numpy(sam, obj):
    for mask in real_photo_crops(mask_rgb(obj))[:2]:
        if not (mask[..., 0] > 0).any():
            continue
        expected = bilinear(sam_canvas(mask)[0], (64, 64)) > 0
        cells = reference_cells(sam, mask).numpy()
        assert np.array_equal(cells, expected) and cells.any()
        nh, nw = sam_new_size(*mask.shape[:2])
        assert not cells[(nh + 15) // 16 :].any() and not cells[:, (nw + 15) // 16 :].any()  # padding
    # R = 128 erodes: fewer cells than a 255 mask of the same shape (threshold R > 123.675)
    white = np.where(mask_rgb(obj) > 0, 255, 0).astype(np.uint8)
    assert reference_cells(sam, mask_rgb(obj)).sum() < reference_cells(sam, white).sum()


# ----- similarity map, points, guidance --------------------------------------------------------
@pytest.fixture(scope="module")
def scene(sam):
    """A landscape crop of cat/01 and the target feature of cat/00's reference."""
    image = np.ascontiguousarray(photo("cat", "01")[:190])
    ref_embedding = sam.embed_images([photo("cat", "00")]).embedding[0]
    fg = ref_embedding.permute(1, 2, 0)[reference_cells(sam, mask_rgb("cat", "00"))]
    target = fg.mean(0, keepdim=True)
    return image, sam.embed_images([image]).embedding[0], target / target.norm(dim=-1, keepdim=True)


def test_similarity_map_equals_numpy(sam, scene):
    image, embedding, target = scene
    size = image.shape[:2]
    feat = embedding.double().numpy().reshape(256, -1)
    cosine = (target.double().numpy() @ (feat / np.linalg.norm(feat, axis=0))).reshape(1, 1, 64, 64)
    expected = sam_postprocess(bilinear(cosine, (256, 256), scale_factor=4), sam_new_size(*size), size)[0, 0]
    sim = similarity_map(sam, target, embedding, size)
    assert sim.shape == size and np.abs(sim.numpy() - expected).max() < 1e-5


def test_points_are_column_row_of_the_extrema(scene, sam):
    image, embedding, target = scene
    sim = similarity_map(sam, target, embedding, image.shape[:2])
    values = sim.numpy()
    row, col = np.unravel_index(np.argmax(values), values.shape)  # first maximum in row-major order
    nrow, ncol = np.unravel_index(np.argmin(values), values.shape)
    positive, negative = location_prior(sim)
    assert positive.tolist() == [[float(col), float(row)]] and negative.tolist() == [[float(ncol), float(nrow)]]


def test_guidance_equals_numpy(scene, sam):
    image, embedding, target = scene
    sim = similarity_map(sam, target, embedding, image.shape[:2])
    values = sim.double().numpy()
    z = (values - values.mean()) / values.std(ddof=1)  # torch.std: unbiased
    expected = 1 / (1 + np.exp(-bilinear(z, (64, 64))))  # from the un-padded map, stretched
    assert np.abs(guidance(sim).numpy().reshape(64, 64) - expected).max() < 1e-6


# ----- prompt frames ---------------------------------------------------------------------------
def test_coordinates_scale_as_sam_predictor_predict(sam):
    """float64 scaling then float32 (numpy ``apply_coords``), bit for bit; the float32 path
    (``apply_coords_torch``) differs by one ulp on some integer coordinates."""
    for size in [(190, 320), (1277, 913), (600, 799)]:
        h, w = size
        coords = np.stack(np.meshgrid(np.arange(w), np.arange(0, h, 7)), -1).reshape(-1, 2)
        ours = sam.scale_coords(torch.from_numpy(coords), size, float64=True).numpy()
        assert np.array_equal(ours, scale_coords(coords, size))
        single = sam.scale_coords(torch.from_numpy(coords), size, float64=False).numpy()
        assert 0 < np.abs(single - ours).max() <= 6.2e-5


class PromptEncoderSpy:
    """Records what reaches SAM's prompt encoder: points (1024 frame), boxes, mask inputs."""

    def __init__(self, encoder, monkeypatch):
        self.calls, self.forward = [], encoder.forward
        monkeypatch.setattr(encoder, "forward", self)

    def __call__(self, points, boxes, masks):
        self.calls.append(dict(points=points[0].clone(), labels=points[1].clone(),
                               boxes=None if boxes is None else boxes.clone(),
                               masks=None if masks is None else masks.clone()))
        return self.forward(points, boxes, masks)

    def assert_official_then_ours(self, xy, boxes):
        """The first half of the calls are the official flow's, the second half ours: equal
        pairwise, and in the frame computed by hand (``xy`` points, ``boxes`` per call)."""
        half = len(self.calls) // 2
        assert half == len(boxes) and len(self.calls) == 2 * half
        for official, ours, box in zip(self.calls[:half], self.calls[half:], boxes):
            assert torch.equal(ours["points"], official["points"])
            assert torch.equal(ours["points"][0], torch.from_numpy(scale_coords(xy, self.size)))
            assert torch.equal(ours["labels"].long(), official["labels"].long())
            assert (ours["boxes"] is None) == (official["boxes"] is None) == (box is None)
            if box is not None:
                expected = scale_coords(np.asarray(box, np.float64).reshape(2, 2), self.size).reshape(1, 4)
                assert torch.equal(ours["boxes"].reshape(1, 4), official["boxes"].reshape(1, 4))  # predictor: 1×1×4
                assert torch.equal(ours["boxes"].reshape(1, 4), torch.from_numpy(expected))
            assert (ours["masks"] is None) == (official["masks"] is None)
            if ours["masks"] is not None:
                assert torch.equal(ours["masks"], official["masks"])


def persam_sample(image):
    refs = [Reference(photo("cat", "00"), mask_rgb("cat", "00"), name="cat/00")]
    return Sample(index=0, image=image, references=refs, meta={"object": "cat"})


# ----- output: low-res -> 1024 -> crop -> original, > 0 ---------------------------------------
def test_postprocess_equals_numpy(sam):
    rng = np.random.default_rng(0)
    low = (rng.normal(size=(1, 3, 256, 256)) * 8).astype(np.float32)
    for size in [(190, 320), (1277, 913)]:
        ours = sam.postprocess(torch.from_numpy(low), size).numpy()
        expected = sam_postprocess(low, sam_new_size(*size), size)
        assert ours.shape == (1, 3, *size) and np.abs(ours - expected).max() < 1e-5
        undecided = np.abs(expected) < 1e-5
        assert np.array_equal((ours > 0)[~undecided], (expected > 0)[~undecided])


def test_refinement_box_equals_numpy_nonzero():
    rng = np.random.default_rng(1)
    mask = rng.random((40, 57)) > 0.97
    y, x = np.nonzero(mask)  # official: inclusive maxima
    assert mask_box(torch.from_numpy(mask)).tolist() == [[x.min(), y.min(), x.max(), y.max()]]


def test_scale_weights_mix_equals_official_arithmetic():
    """Official: weights = cat(1 − w.sum(0), w); Σ weights · maps over the 3 maps, float32."""
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(3, 30, 40)).astype(np.float32) * 5
    differs = 0
    for _ in range(50):
        w = rng.uniform(-0.5, 0.8, size=2).astype(np.float32)
        first = np.float32(1) - (w[0] + w[1])
        expected = first * maps[0] + w[0] * maps[1] + w[1] * maps[2]
        weights = MaskScaleWeights()
        with torch.no_grad():
            weights.weights.copy_(torch.from_numpy(w))
        assert np.array_equal(weights(torch.from_numpy(maps)).detach().numpy(), expected)
        differs += int((np.float32(1) - w[0]) - w[1] != first)
    assert differs > 0  # (1 − w1) − w2 would not be bit-equal


# ----- the official flow, written out with upstream SamPredictor --------------------------------
def official_point_selection(sim: torch.Tensor, negative: bool):
    """persam.py's point_selection (topk on the flattened map; (column, row) as int64)."""
    _, width = sim.shape
    points = [sim.flatten().topk(1)[1]]
    if negative:
        points.append(sim.flatten().topk(1, largest=False)[1])
    xy = np.array([[int(i) % width, int(i) // width] for i in torch.cat(points)], dtype=np.int64)
    return xy, np.array([1, 0][: len(points)])


def box_of(mask):
    y, x = np.nonzero(mask)
    return np.array([x.min(), y.min(), x.max(), y.max()])


@pytest.fixture(scope="module")
def predictor(sam, scene):
    predictor = SamPredictor(sam._raw_sam())
    predictor.set_image(scene[0])
    return predictor


def test_persam_refinements_equal_the_official_flow(sam, scene, predictor, monkeypatch):
    """persam.py with guidance and the target embedding off (plain upstream decoder): step 1,
    refinement 1 (low-res logits), refinement 2 (+ box) -> the same prompts at the encoder and
    the same final mask."""
    image, embedding, target = scene
    spy = PromptEncoderSpy(sam._raw_sam().prompt_encoder, monkeypatch)
    spy.size = image.shape[:2]
    sim = similarity_map(sam, target, embedding, image.shape[:2])
    xy, labels = official_point_selection(sim, negative=True)
    _, _, logits = predictor.predict(point_coords=xy, point_labels=labels, multimask_output=False)
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, mask_input=logits[0:1],
                                              multimask_output=True)
    best = int(np.argmax(scores))
    box = box_of(masks[best])
    masks, scores, _ = predictor.predict(point_coords=xy, point_labels=labels, box=box[None],
                                         mask_input=logits[best:best + 1], multimask_output=True)
    official = masks[int(np.argmax(scores))]

    method = METHODS.get("persam")(sam=sam, guided_attention=False, semantic_prompt=False)
    concept = method.adapt(persam_sample(image))
    assert torch.allclose(concept.target_feat, target)
    ours, fallbacks = method.segment(concept, embedding[None], image.shape[:2], sim, negative_from=sim)
    assert fallbacks == 0 and official.any()
    assert np.array_equal(ours.numpy(), official)
    spy.assert_official_then_ours(xy, [None, None, box])


def test_persam_f_inference_equals_the_official_flow(sam, scene, predictor, monkeypatch):
    """persam_f.py's test loop with given weights: weighted mix of the 3 full-resolution and the
    3 low-res logit maps, box refinement, box refinement -> the same prompts and final mask."""
    image, embedding, target = scene
    spy = PromptEncoderSpy(sam._raw_sam().prompt_encoder, monkeypatch)
    spy.size = image.shape[:2]
    w = torch.tensor([[0.21], [0.47]])  # official parameter shape (2, 1)
    weights = torch.cat((1 - w.sum(0).unsqueeze(0), w), dim=0)
    sim = similarity_map(sam, target, embedding, image.shape[:2])
    xy, labels = official_point_selection(sim, negative=False)
    high, _, low = predictor.predict(point_coords=xy, point_labels=labels, multimask_output=True, return_logits=True)
    mask = (torch.from_numpy(high) * weights.unsqueeze(-1)).sum(0) > 0
    logit = (low * weights.numpy()[..., None]).sum(0)
    box1 = box_of(mask.numpy())
    masks, scores, logits = predictor.predict(point_coords=xy, point_labels=labels, box=box1[None],
                                              mask_input=logit[None], multimask_output=True)
    best = int(np.argmax(scores))
    box2 = box_of(masks[best])
    masks, scores, _ = predictor.predict(point_coords=xy, point_labels=labels, box=box2[None],
                                         mask_input=logits[best:best + 1], multimask_output=True)
    official = masks[int(np.argmax(scores))]

    method = METHODS.get("persam_f")(sam=sam)
    scale_weights = MaskScaleWeights()
    with torch.no_grad():
        scale_weights.weights.copy_(w[:, 0])
    concept = sys.modules[type(method).__module__].Concept(None, None, target, scale_weights)
    ours, fallbacks = method.segment(concept, embedding[None], image.shape[:2], sim, negative_from=None)
    assert fallbacks == 0 and official.any()
    assert np.array_equal(ours.numpy(), official)
    spy.assert_official_then_ours(xy, [None, box1, box2])
