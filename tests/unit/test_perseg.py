"""PerSeg adapter: the bundled sample, the shared real sample and crafted folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sambench.testing import REPO, SHARED_DATA, needs_shared
from PIL import Image

from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, load_plugins

load_plugins()
PerSeg = DATASETS.get("perseg")
BUNDLED = REPO / "datasets" / "perseg_sample"
OBJECTS = ["cat", "colorful_sneaker", "duck_toy"]
PALETTE = [0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6)


def check_structure(data, size: tuple[int, int] | None = None) -> None:
    """3 objects × samples 01, 02; one reference 00 shared by the object's samples."""
    assert [(e[0], e[1]) for e in data.entries] == [(o, i) for o in OBJECTS for i in ("01", "02")]
    for index in range(len(data)):
        sample = data[index]
        obj, image_id = data.entries[index]
        height, width = sample.size
        if size is not None:
            assert max(height, width) == max(size)
        assert sample.index == index and sample.image.dtype == np.uint8 and sample.image.shape == (height, width, 3)
        assert sample.masks.shape == (1, height, width) and sample.masks.dtype == torch.bool
        assert sample.masks.any() and sample.class_names is None
        assert sample.meta == {
            "object": obj, "image_id": image_id, "name": f"{obj}_{image_id}", "prediction_path": f"{obj}/{image_id}",
        }
        (ref,) = sample.references
        assert ref.name == f"{obj}/00" and ref.mask_rgb.dtype == np.uint8
        assert ref.mask_rgb.shape == ref.image.shape and ref.mask.any()
        assert (ref.mask_rgb[ref.mask] == [128, 0, 0]).all() and (ref.mask_rgb[~ref.mask] == 0).all()
    assert data[0].references is data[1].references  # read once per object


def test_bundled_sample_structure():
    data = PerSeg(split="eval", root=str(BUNDLED))
    assert len(data) == 6
    check_structure(data, size=(320, 320))
    train = PerSeg(split="train", root=str(BUNDLED))
    assert train.entries == data.entries  # no training split: both give the same samples


def test_bundled_sample_is_small_and_documented():
    files = [p for p in BUNDLED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 500_000
    assert (BUNDLED / "PROVENANCE.md").is_file() and (BUNDLED / "LICENSE.Personalize-SAM.txt").is_file()
    for path in BUNDLED.glob("Annotations/*/*.png"):
        with Image.open(path) as mask:
            assert mask.mode == "P" and max(mask.size) == 320


def test_config_defaults_to_the_bundled_sample():
    from hydra import compose, initialize_config_dir

    import sambench.cli.launch  # noqa: F401  (registers ${sambench_repo:})
    from sambench import CONFIG_DIR
    from sambench.cli.build import build_dataset

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["dataset=perseg"])
    data = build_dataset(cfg, "eval")
    assert data.root == BUNDLED.resolve() and len(data) == 6 and data.reference_ids == ["00"]


@needs_shared
def test_shared_sample_full_size_matches_palette_indices():
    root = SHARED_DATA / "perseg"
    data = PerSeg(split="eval", root=str(root))
    check_structure(data)
    for index in (0, 3, 5):
        sample = data[index]
        obj, image_id = data.entries[index]
        with Image.open(root / "Annotations" / obj / f"{image_id}.png") as mask:
            assert mask.mode == "P"
            indices = np.array(mask)
        assert np.array_equal(sample.masks[0].numpy(), indices > 0)
        assert max(sample.size) >= 1277


def test_few_shot_reference_ids():
    data = PerSeg(split="eval", root=str(BUNDLED), reference_ids=["00", "01"])
    assert data.entries == [(o, "02") for o in OBJECTS]
    for index in range(len(data)):
        names = [ref.name for ref in data[index].references]
        assert names == [f"{OBJECTS[index]}/00", f"{OBJECTS[index]}/01"]


def test_object_subset_and_split_check():
    data = PerSeg(split="eval", root=str(BUNDLED), objects=["duck_toy", "cat"])
    assert [e[0] for e in data.entries] == ["cat", "cat", "duck_toy", "duck_toy"]
    with pytest.raises(ConfigError, match="split"):
        PerSeg(split="test", root=str(BUNDLED))


# ---------------------------------------------------------------- crafted folders


def write_pair(root, obj: str, image_id: str, mask: np.ndarray | None, image_size=None, mode: str = "P") -> None:
    """Images/<obj>/<id>.jpg (grey) and, unless ``mask`` is None, Annotations/<obj>/<id>.png.

    ``mask`` is H×W bool; ``mode`` "P" (index 1), "L" (0/255) or "RGB" (white)."""
    height, width = image_size or mask.shape
    (root / "Images" / obj).mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / obj).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(root / "Images" / obj / f"{image_id}.jpg")
    if mask is None:
        return
    if mode == "P":
        file = Image.fromarray(mask.astype(np.uint8), mode="P")
        file.putpalette(PALETTE)
    elif mode == "L":
        file = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
    else:
        file = Image.fromarray(np.repeat(mask[..., None], 3, axis=-1).astype(np.uint8) * 255)
    file.save(root / "Annotations" / obj / f"{image_id}.png")


def square(height=24, width=32, top=4, left=6, side=10) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[top: top + side, left: left + side] = True
    return mask


@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_crafted_mask_modes(tmp_path, mode):
    write_pair(tmp_path, "toy", "00", square(), mode=mode)
    write_pair(tmp_path, "toy", "01", square(top=8), mode=mode)
    sample = PerSeg(split="eval", root=str(tmp_path))[0]
    assert np.array_equal(sample.masks[0].numpy(), square(top=8))
    ref = sample.references[0]
    assert np.array_equal(ref.mask, square())
    expected = {"P": [128, 0, 0], "L": [255, 255, 255], "RGB": [255, 255, 255]}[mode]
    assert (ref.mask_rgb[square()] == expected).all()


def test_crafted_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, "toy", "00", square())
    write_pair(tmp_path, "toy", "01", square(), image_size=(24, 30))
    data = PerSeg(split="eval", root=str(tmp_path))
    with pytest.raises(DatasetError, match=r"01\.png is 24x32 but image .*01\.jpg is 24x30"):
        data[0]


def test_crafted_missing_mask_names_it(tmp_path):
    write_pair(tmp_path, "toy", "00", square())
    write_pair(tmp_path, "toy", "01", None, image_size=(24, 32))
    with pytest.raises(DatasetError, match=r"mask not found: .*toy/01\.png"):
        PerSeg(split="eval", root=str(tmp_path))


def test_crafted_missing_reference_id(tmp_path):
    write_pair(tmp_path, "toy", "01", square())
    write_pair(tmp_path, "toy", "02", square())
    with pytest.raises(DatasetError, match=r"toy has no reference image 00\.jpg"):
        PerSeg(split="eval", root=str(tmp_path))


def test_crafted_empty_reference_mask(tmp_path):
    write_pair(tmp_path, "toy", "00", np.zeros((24, 32), bool))
    write_pair(tmp_path, "toy", "01", square())
    data = PerSeg(split="eval", root=str(tmp_path))
    with pytest.raises(DatasetError, match=r"empty reference mask: .*toy/00\.png \(expected a non-empty object mask\)"):
        data[0]


def test_crafted_unknown_object_lists_valid_ones(tmp_path):
    for obj in ("dog", "teapot"):
        write_pair(tmp_path, obj, "00", square())
        write_pair(tmp_path, obj, "01", square())
    with pytest.raises(DatasetError, match=r"unknown PerSeg object 'dgo'.*did you mean 'dog'.*valid: dog, teapot"):
        PerSeg(split="eval", root=str(tmp_path), objects=["dgo"])


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found"):
        PerSeg(split="eval", root=str(tmp_path / "nowhere"))
