"""Malformed data files (issue 13, data part): each is refused with one clear DatasetError naming
the file and record, or skipped with one counting warning, or read correctly — never a crash, a
raw traceback or silently wrong pixels. Every input is generated here in a few lines."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from pycocotools import mask as mask_utils

from sambench.data import base
from sambench.data.base import read_image, read_label_png, read_mask_rgb, set_max_image_pixels, walk_files
from sambench.data.coco_format import (
    annotation_mask,
    compressed_rle_counts,
    decode_segmentation,
    load_coco_json,
    segmentation_problem,
)
from sambench.data.few_shot import FewShotSubset
from sambench.data.refer_json import load_refs
from sambench.testing.semantic_synthetic import write_synthetic_cityscapes
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, load_plugins

load_plugins()
Coco = DATASETS.get("coco_instances")
Cityscapes = DATASETS.get("cityscapes")
PerSeg = DATASETS.get("perseg")
ImageFolder = DATASETS.get("image_folder")
PascalContext = DATASETS.get("pascal_context")

H, W = 10, 12
SQUARE = {"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 16.0, "bbox": [2, 2, 4, 4],
          "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]]}
CATEGORIES = [{"id": 3, "name": "car"}, {"id": 1, "name": "person"}]


def ann(**changes) -> dict:
    return {**SQUARE, **changes}


def write_coco(root: Path, annotations, images=None, pixels: np.ndarray | None = None, raw: str | None = None) -> dict:
    """root/annotations/instances_val2017.json + root/val2017/a.png (10×12 grey unless given)."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.fromarray(pixels if pixels is not None else np.full((H, W, 3), 100, np.uint8)).save(root / "val2017" / "a.png")
    images = images if images is not None else [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    text = raw if raw is not None else json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    (root / "annotations" / "instances_val2017.json").write_text(text)
    return dict(split="eval", root=str(root), ann_file="annotations/instances_val2017.json")


def png_chunks(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A minimal PNG file, to state headers PIL would not write (huge sizes, 16-bit RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def jpeg_with_orientation(path: Path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=100, exif=exif.tobytes())


def red_of(image: np.ndarray) -> np.ndarray:
    return (image[..., 0] > 200) & (image[..., 1] < 100) & (image[..., 2] < 100)


def covers_red(image: np.ndarray, mask) -> bool:
    """Does ``mask`` (H×W bool) cover the red quadrant of ``image`` (IoU > 0.8, JPEG edges aside)?"""
    red, mask = red_of(image), np.asarray(mask)
    return (red & mask).sum() / (red | mask).sum() > 0.8


def quadrants(height: int, width: int) -> np.ndarray:
    """An RGB image whose four quadrants have distinct flat colours (survives JPEG)."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2, : width // 2] = (250, 0, 0)
    image[: height // 2, width // 2:] = (0, 250, 0)
    image[height // 2:, : width // 2] = (0, 0, 250)
    image[height // 2:, width // 2:] = (250, 250, 250)
    return image


# ----------------------------------------------------------------------------- COCO polygons


@pytest.mark.parametrize("value", [1e12, 1e8, -1e8])
def test_huge_polygon_coordinates_are_refused_before_pycocotools(value):
    polygon = [[2, 2, value, 2, 6, 6, 2, 6]]
    assert "outside the 10x12 (HxW) image" in segmentation_problem(polygon, H, W)
    with pytest.raises(DatasetError, match="outside the 10x12"):
        decode_segmentation(polygon, H, W)  # would segfault / allocate ~16 GB in frPyObjects


def test_huge_polygon_is_skipped_and_counted_in_one_warning(tmp_path, caplog):
    bad = ann(id=2, segmentation=[[2, 2, 1e12, 2, 6, 6, 2, 6]])
    with caplog.at_level(logging.WARNING):
        data = Coco(**write_coco(tmp_path / "c", [SQUARE, bad]))
    assert data.num_invalid_annotations == 1 and data[0].num_instances == 1
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "skipped 1 of 2 annotations" in line and "annotation 2" in line and "x = 1e+12" in line


def test_polygon_slightly_outside_the_image_is_kept():
    assert segmentation_problem([[-0.5, 0, W + 0.9, 0, W + 0.9, H + 0.9]], H, W) is None


@pytest.mark.parametrize("segmentation, expected", [
    ([["a", "b", "c", "d", "e", "f"]], "not a flat list of numbers"),
    ([[[1, 2], [3, 4], [5, 6]]], "not a flat list of numbers"),
    ([[1, 2, [3], 4, 5, 6]], "not a flat list of numbers"),
    ([[1, 2, None, 4, 5, 6]], "not a flat list of numbers"),
    ([[1, 2, 3, 4, 5, float("nan")]], "NaN or infinite"),
    ([[1, 2, 3, 4, 5, float("inf")]], "NaN or infinite"),
    ([[1, 2, 3, 4]], "4 coordinates"),
    ([[1, 2, 3, 4, 5, 6, 7]], "7 coordinates"),
    ([[]], "0 coordinates"),
    ([], "empty polygon list"),
    ([1, 2, 3, 4, 5, 6], "a polygon is a int"),
    ("polygon", "segmentation is a str"),
    (None, "segmentation is a NoneType"),
    ([[10 ** 30, 2, 3, 4, 5, 6]], "not a flat list of numbers"),
])
def test_malformed_polygons_are_named(segmentation, expected):
    assert expected in segmentation_problem(segmentation, H, W)
    with pytest.raises(DatasetError, match="cannot decode"):
        decode_segmentation(segmentation, H, W)


def test_nan_in_the_json_file_is_skipped(tmp_path):
    raw = json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
                      "annotations": [SQUARE, ann(id=2, segmentation=[[1, 1, float("nan"), 2, 3, 3]])],
                      "categories": CATEGORIES})  # json.dumps writes the NaN literal, json.load reads it
    assert "NaN" in raw
    data = Coco(**write_coco(tmp_path / "c", None, raw=raw))
    assert data.num_invalid_annotations == 1


# ----------------------------------------------------------------------------- COCO RLE


def test_compressed_rle_round_trip_and_garbage():
    mask = np.zeros((H, W), np.uint8, order="F")
    mask[2:7, 3:9] = 1
    rle = mask_utils.encode(mask)
    counts = rle["counts"].decode("ascii")
    assert sum(compressed_rle_counts(counts)) == H * W
    assert decode_segmentation({"size": [H, W], "counts": counts}, H, W).sum() == 30
    for garbage in ("!!!!", "\u00e9\u00e9", "zzzz", "P", counts + "P"):
        assert compressed_rle_counts(garbage) is None
        with pytest.raises(DatasetError, match="not a valid compressed COCO RLE"):
            decode_segmentation({"size": [H, W], "counts": garbage}, H, W)  # pycocotools: ValueError / overread
    with pytest.raises(DatasetError, match="cover 1 pixels"):
        decode_segmentation({"size": [H, W], "counts": "01"}, H, W)


@pytest.mark.parametrize("rle, expected", [
    ({"size": [20, 12], "counts": [0, 240]}, "not the image's [height, width] [10, 12]"),
    ({"size": [H, W], "counts": [0, 3, 7]}, "cover 10 pixels; expected height*width = 10*12 = 120"),
    ({"size": [H, W], "counts": [0, -3, 123]}, "non-negative ints"),
    ({"size": [H, W], "counts": [0, 3.5, 116.5]}, "non-negative ints"),
    ({"size": [H], "counts": [120]}, "expected [height, width]"),
    ({"size": [H, W]}, "'counts' must be"),
    ({"size": [H, W], "counts": ""}, "empty string"),
])
def test_bad_rle_is_named(rle, expected):
    assert expected in segmentation_problem(rle, H, W)


def test_bad_crowd_rle_is_skipped_with_a_warning(tmp_path, caplog):
    crowd = ann(id=2, iscrowd=1, segmentation={"size": [H, W], "counts": "garbage!"})
    wrong_size = ann(id=3, iscrowd=1, segmentation={"size": [20, 24], "counts": [0, 480]})
    with caplog.at_level(logging.WARNING):
        data = Coco(**write_coco(tmp_path / "c", [SQUARE, crowd, wrong_size]), include_crowd=True)
    assert data.num_invalid_annotations == 2 and data[0].num_instances == 1
    assert sum("skipped 2 of 3 annotations" in r.getMessage() for r in caplog.records) == 1


# ----------------------------------------------------------------------------- COCO records


def test_duplicate_image_ids_are_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "height": H, "width": W}, {"id": 1, "file_name": "b.png", "height": H, "width": W}]
    with pytest.raises(DatasetError, match=r"instances_val2017.json: image id 1 appears twice \(images #0 and #1\)"):
        Coco(**write_coco(tmp_path / "c", [SQUARE, ann(id=2)], images=images))


def test_duplicate_annotation_ids_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="annotation id 1 appears twice"):
        Coco(**write_coco(tmp_path / "c", [SQUARE, ann()]))


def test_orphans_and_boxes_outside_are_counted_in_one_warning(tmp_path, caplog):
    annotations = [SQUARE, ann(id=2, image_id=99), ann(id=3, image_id=98), ann(id=4, bbox=[50, 50, 3, 3]),
                   ann(id=5, bbox=[-9, 0, 4, 4])]
    with caplog.at_level(logging.WARNING):
        data = Coco(**write_coco(tmp_path / "c", annotations))
    assert len(data) == 1 and data[0].num_instances == 1
    (line,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "skipped 4 of 5 annotations" in line
    assert "2 whose image_id is not in 'images' (first: annotation 2 names image_id 99)" in line
    assert "2 whose box lies wholly outside its image (first: annotation 4" in line


@pytest.mark.parametrize("change, expected", [
    (dict(category_id=7), r"annotation 1 has category_id 7, which is not an id in 'categories' \(1 annotation"),
    (dict(category_id="3"), r"annotation 1 has category_id '3'"),
    (dict(category_id=[3]), r"annotation 1 has category_id \[3\]"),
    (dict(image_id="1"), r"annotation 1 has image_id '1'; expected the int id of an image"),
    (dict(image_id=[1]), r"image_id \[1\]"),
    (dict(id="x"), r"annotation #0 has id 'x'; expected an int"),
])
def test_wrong_annotation_types_are_refused(tmp_path, change, expected):
    with pytest.raises(DatasetError, match=expected):
        Coco(**write_coco(tmp_path / "c", [ann(**change)]))


@pytest.mark.parametrize("change, expected", [
    (dict(bbox=["a", 2, 4, 4]), "bbox"),
    (dict(bbox=[2, 2, -4, 4]), "negative width"),
    (dict(bbox=[2, 2, 4]), "bbox"),
    (dict(bbox=[2, 2, 1e12, 4]), "reaches far beyond"),
    (dict(bbox=None), "bbox"),
    (dict(area="big"), "area 'big'"),
    (dict(iscrowd="0"), "iscrowd '0'"),
])
def test_wrong_annotation_values_are_skipped_and_named(tmp_path, caplog, change, expected):
    with caplog.at_level(logging.WARNING):
        data = Coco(**write_coco(tmp_path / "c", [SQUARE, ann(id=2, **change)]))
    assert data.num_invalid_annotations == 1
    assert any(expected in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("images, expected", [
    ([{"id": 1, "file_name": "a.png", "height": 0, "width": W}], "image 1 has height 0; expected a positive integer"),
    ([{"id": 1, "file_name": "a.png", "height": H, "width": -5}], "image 1 has width -5"),
    ([{"id": 1, "file_name": "a.png", "height": "10", "width": W}], "image 1 has height '10'"),
    ([{"id": "1", "file_name": "a.png", "height": H, "width": W}], "image #0 has id '1'; expected an int"),
    ([{"file_name": "a.png"}], "image #0 has id None"),
    (["a.png"], "image #0 is a str"),
    ([{"id": 1, "height": H, "width": W}], "image 1 needs a 'file_name'"),
    ([{"id": 1, "file_name": "", "height": H, "width": W}], "image 1 needs a 'file_name'"),
])
def test_bad_image_records_are_refused(tmp_path, images, expected):
    with pytest.raises(DatasetError, match=expected):
        Coco(**write_coco(tmp_path / "c", [SQUARE], images=images))


@pytest.mark.parametrize("raw, expected", [
    ("", "not valid JSON"),
    ("{", "not valid JSON"),
    ("[]", "holds a JSON list; expected a JSON object"),
    ('"text"', "holds a JSON str"),
    ('{"images": [], "annotations": []}', "lacks key"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ('{"images": [], "annotations": [1], "categories": []}', "annotation #0 is a int"),
    ('{"images": [], "annotations": [], "categories": [{"id": "a", "name": "x"}]}', "category #0 has id 'a'"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1}]}', "category #0 needs an 'id' and a 'name'"),
    ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": null}]}', "category #0 has name None"),
    ("[" * 100000 + "]" * 100000, "nested too deeply|not valid JSON"),
])
def test_broken_json_files_are_refused(tmp_path, raw, expected):
    with pytest.raises(DatasetError, match=expected):
        Coco(**write_coco(tmp_path / "c", None, raw=raw))


def test_non_utf8_and_folder_annotation_files(tmp_path):
    kwargs = write_coco(tmp_path / "c", [SQUARE])
    ann_path = Path(kwargs["root"]) / kwargs["ann_file"]
    ann_path.write_bytes(b'{"images": "\xff\xfe"}')
    with pytest.raises(DatasetError, match="is not UTF-8 text"):
        Coco(**kwargs)
    ann_path.unlink()
    ann_path.mkdir()
    with pytest.raises(DatasetError, match="is a folder; expected a COCO instances json"):
        Coco(**kwargs)


def test_empty_annotations_are_an_error_not_an_empty_evaluation(tmp_path):
    with pytest.raises(DatasetError, match=r"instances_val2017.json: no image has an annotation .*0 usable annotation"):
        Coco(**write_coco(tmp_path / "a", []))
    crowd_only = [ann(iscrowd=1, segmentation={"size": [H, W], "counts": [0, 120]})]
    with pytest.raises(DatasetError, match=r"1 crowd \(include_crowd=false\)"):
        Coco(**write_coco(tmp_path / "b", crowd_only))
    with pytest.raises(DatasetError, match="1 skipped"):
        Coco(**write_coco(tmp_path / "d", [ann(bbox=[40, 40, 2, 2])]))


def test_mask_size_mismatch_names_both_files(tmp_path):
    kwargs = write_coco(tmp_path / "c", [SQUARE], images=[{"id": 1, "file_name": "a.png", "height": 20, "width": W}])
    with pytest.raises(DatasetError, match=r"annotation 1 in .*instances_val2017.json is for a 20x12 image .* but image .*a.png is 10x12"):
        Coco(**kwargs)[0]


def test_huge_size_in_the_json_is_not_rasterised(tmp_path):
    """A 100000x100000 image record over a 10x12 file: refused before a 10-GB mask is drawn."""
    kwargs = write_coco(tmp_path / "c", [SQUARE], images=[{"id": 1, "file_name": "a.png", "height": 100000, "width": 100000}])
    with pytest.raises(DatasetError, match="is for a 100000x100000 image"):
        Coco(**kwargs)[0]


# ----------------------------------------------------------------------------- image files


def test_decompression_bomb_header_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_chunks(30000, 30000, 8, 0, b""))
    with pytest.raises(DatasetError, match=r"image .*bomb.png is 30000x30000 = 900.0 megapixels, over the limit max_image_pixels=200000000"):
        read_image(path)
    with pytest.raises(DatasetError, match="label map .*bomb.png is 30000x30000"):
        read_label_png(path)


def test_pixel_limit_is_a_knob(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(path)
    try:
        set_max_image_pixels(100)
        with pytest.raises(DatasetError, match=r"is 12x10 = 0.0 megapixels, over the limit max_image_pixels=100"):
            read_image(path)
        set_max_image_pixels(None)
        assert read_image(path).shape == (H, W, 3)
        for bad in ("abc", 0, -1, 1.5, True):
            with pytest.raises(ConfigError, match="max_image_pixels"):
                set_max_image_pixels(bad)
    finally:
        set_max_image_pixels(base.DEFAULT_MAX_IMAGE_PIXELS)
    assert base.max_image_pixels() == base.DEFAULT_MAX_IMAGE_PIXELS


def test_16_bit_grayscale_photo_is_scaled_not_white(tmp_path):
    values = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    image = read_image(tmp_path / "g16.png")
    assert image.dtype == np.uint8 and image[0, :, 0].tolist() == [0, 64, 128, 255] and (image == image[..., :1]).all()


def test_16_bit_rgb_photo_keeps_the_high_byte(tmp_path):
    rows = b"\x00" + b"".join(struct.pack(">HHH", 256 * v, 30000, 65535) for v in (0, 10, 200))
    (tmp_path / "rgb16.png").write_bytes(png_chunks(3, 1, 16, 2, rows))
    assert read_image(tmp_path / "rgb16.png")[0].tolist() == [[0, 117, 255], [10, 117, 255], [200, 117, 255]]


def test_other_photo_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 5, 3), np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped, colours as stored
    Image.fromarray(rgb[..., 0]).convert("LA").save(tmp_path / "la.png")
    assert np.array_equal(read_image(tmp_path / "la.png"), np.repeat(rgb[..., :1], 3, axis=-1))
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "pt.png", transparency=0)
    assert np.array_equal(read_image(tmp_path / "pt.png"), np.array(palette.convert("RGB")))
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(read_image(tmp_path / "cmyk.jpg").astype(int) - rgb).max() < 40
    Image.fromarray(rgb[..., 0] > 127).save(tmp_path / "one.png")
    assert set(np.unique(read_image(tmp_path / "one.png")).tolist()) <= {0, 255}
    Image.fromarray(np.zeros((4, 5), np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(DatasetError, match="i32.tif has 32-bit integer pixels"):
        read_image(tmp_path / "i32.tif")
    Image.fromarray(np.zeros((4, 5), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(DatasetError, match="f.tif has 32-bit float pixels"):
        read_image(tmp_path / "f.tif")


def test_label_maps_keep_indices_and_refuse_colour(tmp_path):
    Image.fromarray(np.array([[0, 7, 255]], np.uint16)).save(tmp_path / "l16.png")
    labels = read_label_png(tmp_path / "l16.png")
    assert labels.tolist() == [[0, 7, 255]]  # indices, never scaled
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "one.png")
    assert read_label_png(tmp_path / "one.png").tolist() == [[1, 0]]
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png has mode RGB; expected a single-channel PNG"):
        read_label_png(tmp_path / "rgb.png")


def test_16_bit_mask_keeps_its_foreground(tmp_path):
    Image.fromarray(np.array([[0, 1, 1000]], np.uint16)).save(tmp_path / "m16.png")
    assert read_mask_rgb(tmp_path / "m16.png")[0, :, 0].tolist() == [0, 1, 255]  # clipped, not scaled to 0


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"not an image at all", "expected a complete JPEG/PNG file"),
    ("truncated-jpeg", "expected a complete JPEG/PNG file"),
    ("truncated-png", "expected a complete JPEG/PNG file"),
])
def test_broken_image_files(tmp_path, content, expected):
    path = tmp_path / "x.img"
    if isinstance(content, str):
        buffer = io.BytesIO()
        pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG" if "jpeg" in content else "PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    for reader in (read_image, read_label_png, read_mask_rgb):
        with pytest.raises(DatasetError, match=expected):
            reader(path)


def test_missing_file_and_folder_instead_of_an_image(tmp_path):
    with pytest.raises(DatasetError, match="image not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(DatasetError, match="d.jpg is a folder; expected an image file"):
        read_image(tmp_path / "d.jpg")


def test_corrupted_bytes_never_escape_as_other_errors(tmp_path):
    """Byte flips and cuts of real PNG/JPEG files: decoded or refused, nothing else."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (24, 20, 3), np.uint8)
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        data = buffer.getvalue()
        for trial in range(40):
            broken = bytearray(data[: int(rng.integers(1, len(data)))] if trial % 2 else data)
            for position in rng.integers(0, len(broken), 4):
                broken[position] = int(rng.integers(0, 256))
            (tmp_path / "f").write_bytes(bytes(broken))
            try:
                assert read_image(tmp_path / "f").dtype == np.uint8
            except DatasetError:
                pass


# ----------------------------------------------------------------------------- EXIF orientation


def test_square_jpeg_with_orientation_6_is_read_upright(tmp_path):
    stored = quadrants(16, 16)
    jpeg_with_orientation(tmp_path / "o6.jpg", stored, 6)
    image = read_image(tmp_path / "o6.jpg")
    expected = np.array(ImageOps.exif_transpose(Image.open(tmp_path / "o6.jpg")).convert("RGB"))
    assert np.array_equal(image, expected)
    turned = np.rot90(stored, k=-1)  # orientation 6 = turn 90° clockwise to view
    for y, x in ((4, 4), (4, 12), (12, 4), (12, 12)):  # quadrant centres: upright, not as stored
        assert np.abs(image[y, x].astype(int) - turned[y, x]).max() < 30
    assert np.abs(image[4, 4].astype(int) - stored[4, 4]).max() > 200


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_exif_transpose(tmp_path, orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (3, 5, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = np.array(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "o.png"), expected)


def write_perseg(root: Path, image: np.ndarray, mask: np.ndarray, orientation: int) -> None:
    for obj in ("thing",):
        (root / "Images" / obj).mkdir(parents=True)
        (root / "Annotations" / obj).mkdir(parents=True)
        for image_id in ("00", "01"):
            jpeg_with_orientation(root / "Images" / obj / f"{image_id}.jpg", image, orientation)
            Image.fromarray(mask).save(root / "Annotations" / obj / f"{image_id}.png")


def test_perseg_mask_drawn_upright_on_a_rotated_jpeg(tmp_path):
    stored = quadrants(16, 24)  # stored 16x24, shown upright as 24x16
    upright = np.rot90(stored, k=-1)
    mask = red_of(upright).astype(np.uint8) * 255  # the red quadrant, as seen upright
    write_perseg(tmp_path / "p", stored, mask, 6)
    sample = PerSeg(split="eval", root=str(tmp_path / "p"))[0]
    assert sample.image.shape == (24, 16, 3) and sample.masks.shape == (1, 24, 16)
    assert covers_red(sample.image, sample.masks[0].numpy())


def test_perseg_mask_made_on_the_stored_pixels(tmp_path):
    stored = quadrants(16, 24)
    mask = red_of(stored).astype(np.uint8) * 255  # the mask matches the stored grid (24 wide)
    write_perseg(tmp_path / "p", stored, mask, 6)
    sample = PerSeg(split="eval", root=str(tmp_path / "p"))[0]
    assert sample.image.shape == (16, 24, 3)  # read as stored: the mask's size says so
    assert covers_red(sample.image, sample.masks[0].numpy())


def test_coco_width_height_decide_stored_or_upright(tmp_path):
    stored = quadrants(16, 24)
    for name, size, polygon in (("stored", (16, 24), [0, 0, 12, 0, 12, 8, 0, 8]),
                                ("upright", (24, 16), [8, 0, 16, 0, 16, 12, 8, 12])):
        root = tmp_path / name
        kwargs = write_coco(root, [ann(segmentation=[polygon], bbox=[0, 0, 4, 4])],
                            images=[{"id": 1, "file_name": "a.jpg", "height": size[0], "width": size[1]}])
        jpeg_with_orientation(root / "val2017" / "a.jpg", stored, 6)
        sample = Coco(**kwargs)[0]
        assert sample.image.shape[:2] == size
        assert covers_red(sample.image, sample.masks[0].numpy())


def test_size_mismatch_message_names_exif(tmp_path):
    jpeg_with_orientation(tmp_path / "a.jpg", quadrants(16, 24), 6)
    image = read_image(tmp_path / "a.jpg")  # upright, 24x16: a reader that ignores the json's size
    info = {"id": 1, "height": 16, "width": 24}
    with pytest.raises(DatasetError, match=r"is for a 16x24 image .* but image .*a.jpg is 24x16 \(its EXIF orientation 6"):
        annotation_mask(ann(), info, tmp_path / "a.jpg", image.shape[:2], tmp_path / "x.json")


# ----------------------------------------------------------------------------- folder walking


def test_symlink_loops_are_followed_once(tmp_path, caplog):
    root = write_synthetic_cityscapes(tmp_path / "cs", train_images=2, val_images=1, size=(16, 32))
    for top in ("leftImg8bit", "gtFine"):
        os.symlink(".", root / top / "val" / "loop")
        os.symlink(".", root / top / "val" / "frankfurt" / "loop")
    with caplog.at_level(logging.WARNING):
        data = Cityscapes(split="eval", root=str(root))
    assert len(data) == 1  # was 41: the loop was followed ~40 levels deep
    assert any("skipped 2 folder link(s)" in r.getMessage() for r in caplog.records)


def test_linked_folder_outside_the_root_is_read_once(tmp_path):
    root = write_synthetic_cityscapes(tmp_path / "cs", train_images=2, val_images=1, size=(16, 32))
    for top in ("leftImg8bit", "gtFine"):
        city = root / top / "val" / "frankfurt"
        elsewhere = tmp_path / "disk" / top
        elsewhere.parent.mkdir(exist_ok=True)
        city.rename(elsewhere)
        city.symlink_to(elsewhere, target_is_directory=True)
        (root / top / "val" / "again").symlink_to(elsewhere, target_is_directory=True)  # a second link: skipped
    data = Cityscapes(split="eval", root=str(root))
    assert len(data) == 1 and data[0].semantic.shape == (16, 32)


def test_walk_files_and_image_folder_with_a_loop(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "imgs" / name)
    os.symlink("..", tmp_path / "imgs" / "sub" / "up")
    assert [p.name for p in walk_files(tmp_path / "imgs", lambda n: n.endswith(".png"))] == ["a.png", "b.png"]
    data = ImageFolder(split="train", root=str(tmp_path / "imgs"), eval_images=1)
    assert len(data) == 1


def test_perseg_object_link_loop_is_skipped(tmp_path):
    write_perseg(tmp_path / "p", quadrants(8, 8), np.full((8, 8), 255, np.uint8), 1)
    os.symlink(".", tmp_path / "p" / "Images" / "loop")
    assert PerSeg(split="eval", root=str(tmp_path / "p")).objects == ["thing"]


# ----------------------------------------------------------------------------- other files


def test_semantic_16_bit_labels(tmp_path):
    root = write_synthetic_cityscapes(tmp_path / "cs", train_images=2, val_images=1, size=(16, 32))
    label = next((root / "gtFine" / "val").rglob("*_labelTrainIds.png"))
    values = np.array(Image.open(label)).astype(np.uint16)
    Image.fromarray(values).save(label)  # the same trainIds, 16-bit: legitimate
    assert np.array_equal(Cityscapes(split="eval", root=str(root))[0].semantic.numpy(), values)
    values[0, 0] = 1000
    Image.fromarray(values).save(label)
    with pytest.raises(DatasetError, match="holds values 0..1000; expected class indices 0..255"):
        Cityscapes(split="eval", root=str(root))[0]


def test_semantic_image_that_is_a_bomb_or_16_bit(tmp_path):
    root = write_synthetic_cityscapes(tmp_path / "cs", train_images=2, val_images=1, size=(16, 32))
    image = next((root / "leftImg8bit" / "val").rglob("*.png"))
    gray = (np.array(Image.open(image).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(gray).save(image)
    sample = Cityscapes(split="eval", root=str(root))[0]
    assert np.array_equal(sample.image[..., 0], gray // 257)
    image.write_bytes(png_chunks(30000, 30000, 8, 0, b""))
    with pytest.raises(DatasetError, match="30000x30000"):
        Cityscapes(split="eval", root=str(root))[0]


def test_all_ignore_labels_make_an_empty_few_shot_selection_an_error(tmp_path, monkeypatch):
    root = write_synthetic_cityscapes(tmp_path / "cs", train_images=2, val_images=1, size=(16, 32))
    for label in (root / "gtFine" / "train").rglob("*_labelTrainIds.png"):
        Image.fromarray(np.full((16, 32), 255, np.uint8)).save(label)
    monkeypatch.setenv("SAMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DatasetError, match="holds any of the 19 classes .*selection is empty"):
        FewShotSubset(Cityscapes(split="train", root=str(root)), shots=1)


def test_pascal_context_non_utf8_split_list(tmp_path):
    voc = tmp_path / "VOC2010"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DatasetError, match="cannot read split list .*val.txt"):
        PascalContext(split="eval", root=str(voc))


def test_refs_json_folder_and_bad_json(tmp_path):
    (tmp_path / "refs(unc).json").mkdir()
    with pytest.raises(DatasetError, match="is a folder"):
        load_refs(tmp_path / "refs(unc).json")
    (tmp_path / "r.json").write_bytes(b"\xff")
    with pytest.raises(DatasetError, match="not valid UTF-8 JSON"):
        load_refs(tmp_path / "r.json")


def test_load_coco_json_passes_lvis_style_files(tmp_path):
    path = tmp_path / "lvis.json"
    data = {"images": [{"id": 5, "height": H, "width": W, "coco_url": "http://x/val2017/a.jpg"}],
            "annotations": [{"id": 9, "image_id": 5, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9.0,
                             "segmentation": [[1, 1, 4, 1, 4, 4]]}],
            "categories": [{"id": 1, "name": "a", "frequency": "r"}]}
    path.write_text(json.dumps(data))
    assert len(load_coco_json(path)["annotations"]) == 1
    assert math.isclose(data["annotations"][0]["area"], 9.0)
