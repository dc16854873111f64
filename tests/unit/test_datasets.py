"""Dataset adapters: the generated sample set and COCO instances (real sample + crafted files)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sambench.testing import SHARED_DATA, needs_shared
from PIL import Image

from sambench.data.base import inside_root
from sambench.errors import DatasetError
from sambench.prompts import mask_boxes
from sambench.registry import DATASETS, load_plugins

load_plugins()
Sample = DATASETS.get("sample")
Coco = DATASETS.get("coco_instances")
COCO_TINY = SHARED_DATA / "coco_tiny"


def test_sample_is_deterministic_and_splits_differ():
    a, b = Sample(split="train", num_images=3), Sample(split="train", num_images=3)
    other_split, other_seed = Sample(split="eval", num_images=3), Sample(split="train", num_images=3, seed=1)
    for i in range(3):
        assert np.array_equal(a[i].image, b[i].image) and torch.equal(a[i].masks, b[i].masks)
    assert not np.array_equal(a[0].image, other_split[0].image)
    assert not np.array_equal(a[0].image, other_seed[0].image)


def test_sample_masks_are_visible_and_boxes_tight():
    data = Sample(split="eval", num_images=8, max_instances=3)
    for i in range(len(data)):
        sample = data[i]
        assert sample.image.dtype == np.uint8 and sample.image.shape == (96, 128, 3)
        assert 1 <= sample.num_instances <= 3
        assert (sample.masks.flatten(1).sum(1) >= 30).all()
        assert torch.equal(sample.boxes, mask_boxes(sample.masks))
        assert sample.class_ids.max() < len(data.class_names)


@needs_shared
def test_coco_tiny_matches_pycocotools():
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(COCO_TINY / "annotations" / "instances_val2017.json"))
    data = Coco(split="eval", root=str(COCO_TINY), ann_file="annotations/instances_val2017.json")
    non_crowd = [a for a in coco.loadAnns(coco.getAnnIds()) if not a["iscrowd"]]
    assert len(data) == len({a["image_id"] for a in non_crowd})
    assert sum(len(anns) for _, anns in data.entries) == len(non_crowd)
    assert len(data.class_names) == 80 and data.class_names[0] == "person"
    sample = data[0]
    ann = coco.loadAnns(sample.meta["ann_ids"][0])[0]
    assert np.array_equal(sample.masks[0].numpy(), coco.annToMask(ann).astype(bool))
    x, y, w, h = ann["bbox"]
    assert sample.boxes[0].tolist() == pytest.approx([x, y, x + w, y + h])
    assert sample.image.shape[:2] == (coco.imgs[ann["image_id"]]["height"], coco.imgs[ann["image_id"]]["width"])
    assert data.class_names[int(sample.class_ids[0])] == coco.cats[ann["category_id"]]["name"]


@needs_shared
def test_coco_tiny_train_split_and_caps():
    data = Coco(split="train", root=str(COCO_TINY), ann_file="x", train_ann_file="annotations/instances_train2017.json",
                max_images=3, max_instances=2)
    assert len(data) == 3 and all(len(anns) <= 2 for _, anns in data.entries)
    assert data[2].image.ndim == 3


def write_coco(root, annotations, images=None, image_bytes=None):
    """A tiny COCO folder: one 10×12 PNG image (or the given bytes) and the given annotations."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = images or [{"id": 1, "file_name": "a.png", "height": 10, "width": 12}]
    if image_bytes is None:
        Image.fromarray(np.full((10, 12, 3), 100, np.uint8)).save(root / "val2017" / "a.png")
    else:
        (root / "val2017" / "a.png").write_bytes(image_bytes)
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return dict(split="eval", root=str(root), ann_file="annotations/instances_val2017.json")


SQUARE = {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 16.0, "bbox": [2, 2, 4, 4],
          "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]}
CROWD = {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 6.0, "bbox": [0, 0, 2, 3],
         "segmentation": {"size": [10, 12], "counts": [0, 3, 7, 3, 107]}}
BAD_POLYGON = {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0, "bbox": [0, 0, 2, 2],
               "segmentation": [[0, 0, 2, 0, 2]]}


def test_crowd_skipped_by_default_and_decoded_when_asked(tmp_path):
    kwargs = write_coco(tmp_path / "c", [SQUARE, CROWD])
    assert Coco(**kwargs)[0].num_instances == 1
    sample = Coco(**kwargs, include_crowd=True)[0]
    assert sample.num_instances == 2
    crowd = sample.masks[1].numpy()
    assert crowd.sum() == 6 and crowd[:3, :2].all()  # column-major RLE: 3 ones in columns 0 and 1
    assert sample.class_ids.tolist() == [1, 0]  # category ids sorted: 1 -> 0 (person), 3 -> 1 (car)


def test_invalid_polygon_is_skipped_and_counted(tmp_path):
    data = Coco(**write_coco(tmp_path / "c", [SQUARE, BAD_POLYGON]))
    assert data.num_invalid_annotations == 1 and data[0].num_instances == 1


def test_path_escaping_the_root_is_refused(tmp_path):
    images = [{"id": 1, "file_name": "../../secret.png", "height": 10, "width": 12}]
    with pytest.raises(DatasetError, match="escapes the dataset root"):  # refused when the file is indexed
        Coco(**write_coco(tmp_path / "c", [SQUARE], images=images))


def test_missing_root_and_annotation_file(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nope")):
        Coco(split="eval", root=str(tmp_path / "nope"), ann_file="annotations/instances_val2017.json")
    (tmp_path / "c" / "val2017").mkdir(parents=True)
    with pytest.raises(DatasetError, match="instances_val2017.json"):
        Coco(split="eval", root=str(tmp_path / "c"), ann_file="annotations/instances_val2017.json")


def test_unreadable_image_names_the_file(tmp_path):
    data = Coco(**write_coco(tmp_path / "c", [SQUARE], image_bytes=b"\x00not an image"))
    with pytest.raises(DatasetError, match="a.png"):
        data[0]


def test_mask_size_must_match_the_image(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 12}]
    data = Coco(**write_coco(tmp_path / "c", [SQUARE], images=images))
    with pytest.raises(DatasetError, match="a.png"):
        data[0]


def test_symlinked_image_folder_inside_the_root_is_followed(tmp_path):
    """A common layout: root/val2017 -> a folder elsewhere. Names from the json still cannot escape."""
    kwargs = write_coco(tmp_path / "c", [SQUARE])
    elsewhere = tmp_path / "big_disk" / "val2017"
    (tmp_path / "c" / "val2017").rename(elsewhere.parent.mkdir(parents=True) or elsewhere)
    (tmp_path / "c" / "val2017").symlink_to(elsewhere, target_is_directory=True)
    assert Coco(**kwargs)[0].num_instances == 1
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        inside_root(Path(kwargs["root"]).resolve(), "/etc/passwd")


def test_one_image_folder_inference_for_coco_instances_and_coco_ov(tmp_path):
    from sambench.data.coco_format import infer_image_dir

    assert infer_image_dir("annotations/instances_val2017.json", "dataset.image_dir") == "val2017"
    assert infer_image_dir("instances_train2014.json", "dataset.train_image_dir") == "train2014"
    for name in ("annotations/captions_val2017.json", "annotations/instances_.json"):
        with pytest.raises(DatasetError, match=r"instances_<folder>.json\); set dataset.image_dir=<folder"):
            infer_image_dir(name, "dataset.image_dir")
    kwargs = write_coco(tmp_path / "c", [SQUARE])
    renamed = tmp_path / "c" / "annotations" / "val.json"
    (tmp_path / "c" / kwargs["ann_file"]).rename(renamed)
    for name in ("coco_instances", "coco_ov"):  # both adapters infer the folder with it
        with pytest.raises(DatasetError, match=r"'annotations/val.json' .*set dataset.image_dir="):
            DATASETS.get(name)(split="eval", root=kwargs["root"], ann_file="annotations/val.json")
        with pytest.raises(DatasetError, match=r"set dataset.train_image_dir="):
            DATASETS.get(name)(split="train", root=kwargs["root"], ann_file="annotations/val.json",
                              train_ann_file="annotations/train.json")
