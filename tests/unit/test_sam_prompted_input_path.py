"""sam_prompted input path (methods/sam_prompted/README.md): GT boxes and interior points against
numpy written out here, the prompt frame at SAM's prompt encoder computed by hand, and the
masks against upstream ``SamPredictor.predict`` (its numpy API) on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sambench.testing import REPO, TINY_SAM
from input_path_reference import scale_coords
from PIL import Image
from segment_anything import SamPredictor

from sambench.backbones.sam import SamBackbone
from sambench.data.base import read_image
from sambench.prompts import interior_points, mask_boxes
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Sample

load_plugins()
SAMPLE = REPO / "datasets" / "perseg_sample"


def real_masks(size=None) -> np.ndarray:
    """N×H×W bool object masks of the bundled PerSeg sample (real shapes), optionally resized
    (nearest) to ``size`` (h, w)."""
    masks = []
    for obj in ("cat", "colorful_sneaker", "duck_toy"):
        mask = Image.open(SAMPLE / "Annotations" / obj / "01.png").convert("L")
        if size is not None:
            mask = mask.resize(size[::-1], Image.NEAREST)
        masks.append(np.asarray(mask) > 0)
    return np.stack(masks)


def test_gt_boxes_are_tight_pixel_edges():
    """xyxy with x2 = last column + 1 (the edges of the pixel squares, COCO's bbox convention)."""
    masks = np.concatenate([real_masks(), np.zeros((1, 320, 320), bool)])
    masks[2, :, :] = False
    masks[2, 5, 300] = True  # a single pixel
    expected = []
    for mask in masks:
        y, x = np.nonzero(mask)
        expected.append([x.min(), y.min(), x.max() + 1, y.max() + 1] if len(x) else [0, 0, 0, 0])
    assert mask_boxes(torch.from_numpy(masks)).tolist() == np.array(expected, np.float32).tolist()


def brute_force_interior_point(mask: np.ndarray) -> list[float]:
    """The foreground pixel with the largest Euclidean distance to the nearest background pixel,
    everything outside the image counting as background; the first in row-major order on ties."""
    h, w = mask.shape
    by, bx = np.nonzero(~np.pad(mask, 1))
    ys, xs = np.mgrid[0:h, 0:w]
    squared = ((ys.reshape(-1, 1) + 1 - by) ** 2 + (xs.reshape(-1, 1) + 1 - bx) ** 2).min(1).reshape(h, w)
    squared[~mask] = -1
    y, x = np.unravel_index(np.argmax(squared), squared.shape)
    return [float(x), float(y)]


def test_interior_points_are_the_farthest_from_the_boundary():
    masks = real_masks((36, 50))
    masks[1, :, :] = False
    masks[1, 10:30, 0:8] = True  # touches the left border: outside counts as background
    points = interior_points(torch.from_numpy(masks))
    assert points.shape == (3, 1, 2)
    assert points[:, 0].tolist() == [brute_force_interior_point(m) for m in masks]
    assert interior_points(torch.zeros(1, 5, 5, dtype=torch.bool)).tolist() == [[[0.0, 0.0]]]


class StopAfterEncoder(Exception):
    pass


class PromptEncoderSpy:
    """Records the prompts reaching SAM's prompt encoder; ``stop``: raise there (no decoding)."""

    def __init__(self, encoder, monkeypatch):
        self.calls, self.forward, self.stop = [], encoder.forward, False
        monkeypatch.setattr(encoder, "forward", self)

    def __call__(self, points, boxes, masks):
        self.calls.append(dict(points=None if points is None else points[0].clone(),
                               boxes=None if boxes is None else boxes.reshape(-1, 4).clone()))
        if self.stop:
            raise StopAfterEncoder
        return self.forward(points, boxes, masks)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """Tiny SAM (cached embeddings), a landscape crop of a real photo, its real mask and a
    second instance."""
    sam = SamBackbone(**TINY_SAM, cache_dir=str(tmp_path_factory.mktemp("sam-cache")))
    image = np.ascontiguousarray(read_image(SAMPLE / "Images/cat/01.jpg")[:190])
    masks = np.zeros((2, 190, 320), bool)
    masks[0] = real_masks()[0][:190]
    masks[1, 20:61, 230:301] = True
    return sam, Sample(index=0, image=image, masks=torch.from_numpy(masks))


def test_prompts_and_masks_equal_sam_predictor(scene, monkeypatch):
    """The prompts reach the encoder in the frame computed by hand (x · new_w / w,
    y · new_h / h, float64 -> float32; the encoder adds the half-pixel shift), and the masks
    (best of 3 by predicted IoU, logits > 0 at the original size) equal ``SamPredictor.predict``'s."""
    sam, sample = scene
    size = sample.size
    boxes = mask_boxes(sample.masks).numpy()
    points = interior_points(sample.masks).numpy()
    spy = PromptEncoderSpy(sam._raw_sam().prompt_encoder, monkeypatch)
    for prompt in ("box", "point", "box_point"):
        method = METHODS.get("sam_prompted")(sam=sam, prompt=prompt, finetune="none", multimask_output=True)
        spy.stop = prompt != "box_point"  # decode only the last one
        if spy.stop:
            with pytest.raises(StopAfterEncoder):
                method.predict(Batch([sample]))
        else:
            [prediction] = method.predict(Batch([sample]))
        ours = spy.calls[-1]
        if "box" in prompt:
            expected = scale_coords(boxes.reshape(-1, 2, 2), size).reshape(-1, 4)
            assert torch.equal(ours["boxes"], torch.from_numpy(expected))
        else:
            assert ours["boxes"] is None
        if "point" in prompt:
            assert torch.equal(ours["points"], torch.from_numpy(scale_coords(points, size)))
        else:
            assert ours["points"] is None

    spy.stop = False
    predictor = SamPredictor(sam._raw_sam())  # the last prediction: box + point
    predictor.set_image(sample.image)
    for i in range(2):
        official, scores, _ = predictor.predict(box=boxes[i], point_coords=points[i], point_labels=np.array([1]),
                                                multimask_output=True)
        assert np.array_equal(prediction.masks[i].numpy(), official[int(np.argmax(scores))])
        assert prediction.scores[i] == pytest.approx(float(scores.max()), abs=1e-6)
