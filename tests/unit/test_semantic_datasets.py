"""Semantic segmentation adapters (Cityscapes, ADE20K, ACDC, BDD100K, Mapillary, PASCAL-Context)
and the few-shot protocol, on generated copies of the real layouts and on the shared samples."""

from __future__ import annotations

import inspect
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from sambench.testing import REPO, SHARED_DATA, needs_shared
from omegaconf import OmegaConf
from PIL import Image

from sambench import CONFIG_DIR
from sambench.cli import build
from sambench.data import semantic
from sambench.tasks import SEMANTIC_FEW_SHOT
from sambench.data.few_shot import SELECTION_FILE, FewShotSubset, few_shot_selection
from sambench.data.semantic import CITYSCAPES_CLASSES, LABEL_ID_TO_TRAIN_ID, apply_lut, reduce_zero_label
from sambench.testing.semantic_synthetic import (
    MAPILLARY_V12_NAMES,
    write_synthetic_acdc,
    write_synthetic_ade20k,
    write_synthetic_bdd100k,
    write_synthetic_cityscapes,
    write_synthetic_mapillary,
    write_synthetic_pascal_context,
)
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, load_plugins

load_plugins()
Cityscapes = DATASETS.get("cityscapes")
Ade20k = DATASETS.get("ade20k")
Acdc = DATASETS.get("acdc")
Bdd100k = DATASETS.get("bdd100k")
Mapillary = DATASETS.get("mapillary")
PascalContext = DATASETS.get("pascal_context")
NAMES = ("cityscapes", "ade20k", "acdc", "bdd100k", "mapillary", "pascal_context")

#: Cityscapes labelId -> trainId, written out from the spec table (not from the code under test).
SPEC_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CS_LABELS = SHARED_DATA / "cityscapes" / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_"
ADE_SHARED = SHARED_DATA / "ade20k"


def read_png(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def composed_dataset(name: str, root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=[f"dataset={name}", f"dataset.root={root}", *overrides])


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private presence cache for the test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SAMBENCH_CACHE_DIR", str(folder))
    return folder / "semantic_index"


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory) -> Path:
    return write_synthetic_cityscapes(tmp_path_factory.mktemp("cityscapes"), train_images=6, val_images=2)


@pytest.fixture(scope="module")
def cityscapes_big(tmp_path_factory) -> Path:
    """Enough training images for K-shot draws to be real choices."""
    folder = tmp_path_factory.mktemp("cityscapes_big")
    return write_synthetic_cityscapes(folder, train_images=30, val_images=2, size=(32, 64))


# ----------------------------------------------------------------------------- tables


def test_label_id_table_matches_the_spec():
    for label_id in range(256):
        assert LABEL_ID_TO_TRAIN_ID[label_id] == SPEC_TRAIN_IDS.get(label_id, 255), label_id
    assert LABEL_ID_TO_TRAIN_ID.dtype == np.uint8 and LABEL_ID_TO_TRAIN_ID.shape == (256,)
    assert [CITYSCAPES_CLASSES[i] for i in (0, 6, 12, 18)] == ["road", "traffic light", "rider", "bicycle"]
    assert len(CITYSCAPES_CLASSES) == 19


def test_reduce_zero_label_and_apply_lut():
    raw = np.array([[0, 1, 2], [150, 254, 255]], dtype=np.uint8)
    assert reduce_zero_label(raw).tolist() == [[255, 0, 1], [149, 253, 255]]
    assert apply_lut(np.array([26, 9, 7], dtype=np.int32), LABEL_ID_TO_TRAIN_ID).tolist() == [13, 255, 0]
    with pytest.raises(ValueError, match="0..255"):
        apply_lut(np.array([300], dtype=np.int32), LABEL_ID_TO_TRAIN_ID)


# ----------------------------------------------------------------------------- few-shot protocol


def random_presence(num_images: int, num_classes: int, seed: int) -> list[set[int]]:
    """Class c appears with probability ~ 1/(c+1): frequent and rare classes, one class absent."""
    rng = random.Random(seed)
    presence = []
    for _ in range(num_images):
        classes = {c for c in range(num_classes - 1) if rng.random() < 0.9 / (c + 1)}
        presence.append(classes or {0})
    return presence


def test_few_shot_selection_is_deterministic_and_seeded():
    presence = random_presence(300, 12, seed=3)
    a = few_shot_selection(presence, 12, 4, seed=0)
    assert a == few_shot_selection(presence, 12, 4, seed=0)
    assert a != few_shot_selection(presence, 12, 4, seed=1)
    assert a == sorted(set(a)) and len(a) < 300


@pytest.mark.parametrize("shots", [1, 4, 16])
def test_few_shot_selection_gives_each_class_min_k_images(shots):
    presence = random_presence(300, 12, seed=5)
    chosen = few_shot_selection(presence, 12, shots, seed=7)
    for c in range(12):
        available = sum(c in p for p in presence)
        got = sum(c in presence[i] for i in chosen)
        assert got >= min(shots, available), (c, got, available)
        if 0 < available <= shots:  # a class rarer than K gets all of its images
            assert got == available
    present = set().union(*presence)
    assert present == set().union(*(presence[i] for i in chosen))  # covers every class of the split
    assert 11 not in present  # the absent class does not break anything


def test_few_shot_selection_counts_an_image_for_every_class_it_holds():
    disjoint = [{i % 4} for i in range(4 * 5)] + [{3}, {3}]  # one class per image: counts are exact
    chosen = few_shot_selection(disjoint, 4, 3, seed=2)
    assert [sum(c in disjoint[i] for i in chosen) for c in range(4)] == [3, 3, 3, 3]
    assert len(few_shot_selection(disjoint, 4, 6, seed=2)) == 5 + 5 + 5 + 6  # rarer than K: all
    shared = [{0, 1}] * 10  # three images give both classes their three shots
    assert len(few_shot_selection(shared, 2, 3, seed=0)) == 3


def test_few_shot_selection_ignores_values_outside_the_classes():
    presence = [{0, 255}, {1}, {0, 1, 99}]
    assert few_shot_selection(presence, 2, 5, seed=0) == [0, 1, 2]
    with pytest.raises(ValueError):
        few_shot_selection(presence, 2, 0, seed=0)


# ----------------------------------------------------------------------------- Cityscapes


def test_cityscapes_reads_both_label_types_pixel_exactly(cityscapes_root, cache_dir):
    train = Cityscapes(split="train", root=str(cityscapes_root))
    val = Cityscapes(split="eval", root=str(cityscapes_root))
    assert (len(train), len(val)) == (6, 2) and train.TASKS == (SEMANTIC_FEW_SHOT,)
    by_ids = Cityscapes(split="eval", root=str(cityscapes_root), label_type="labelIds")
    seen = set()
    for i in range(len(val)):
        sample, converted = val[i], by_ids[i]
        raw = read_png(cityscapes_root / "gtFine" / "val" / sample.meta["city"]
                       / Path(sample.meta["file_name"]).name.replace("leftImg8bit", "gtFine_labelIds"))
        assert sample.semantic.dtype == torch.int64 and sample.semantic.shape == sample.image.shape[:2]
        assert sample.image.dtype == np.uint8 and sample.image.shape[2] == 3
        assert torch.equal(sample.semantic, converted.semantic)
        for label_id, train_id in ((26, 13), (9, 255), (7, 0), (1, 255), (23, 10)):
            pixels = converted.semantic.numpy()[raw == label_id]
            if pixels.size:
                seen.add(label_id)
                assert (pixels == train_id).all(), label_id
    assert {9, 7, 1, 23} <= seen
    sample = train[0]
    assert sample.class_names == CITYSCAPES_CLASSES
    assert sample.meta["file_name"] == "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert sample.meta["prediction_path"] == "aachen/aachen_000000_000019" and sample.meta["city"] == "aachen"
    assert (cityscapes_root / sample.meta["file_name"]).is_file()
    names = [e.image.name for e in train.entries]
    assert names == sorted(names, key=lambda n: (n.split("_")[0], n))  # sorted by city then frame


def test_cityscapes_labelid_26_becomes_13_anywhere(cityscapes_root):
    """Every generated labelIds file: the adapter's conversion is the spec table, pixel for pixel."""
    data = Cityscapes(split="train", root=str(cityscapes_root), label_type="labelIds")
    spec = np.full(256, 255, dtype=np.int64)
    for label_id, train_id in SPEC_TRAIN_IDS.items():
        spec[label_id] = train_id
    found_car = False
    for i in range(len(data)):
        raw = read_png(data.entries[i].label)
        assert np.array_equal(data[i].semantic.numpy(), spec[raw])
        found_car |= bool((raw == 26).any())
    assert found_car


@needs_shared
def test_shared_cityscapes_frame_labelids_agree_with_shipped_trainids():
    """The shared frame's labelIds and labelTrainIds PNGs were downsampled separately (256x128), so
    a few boundary pixels differ; the conversion must agree everywhere else, and for every labelId
    the shipped trainIds at its pixels must be the table's."""
    root = str(SHARED_DATA / "cityscapes")
    converted = Cityscapes(split="eval", root=root, label_type="labelIds")[0].semantic.numpy()
    shipped = Cityscapes(split="eval", root=root)[0].semantic.numpy()
    assert np.array_equal(shipped, read_png(Path(f"{CS_LABELS}labelTrainIds.png")))
    assert converted.shape == (128, 256)
    mismatch = converted != shipped
    assert mismatch.mean() < 0.003
    padded = np.pad(converted, 2, mode="edge")
    for y, x in zip(*np.nonzero(mismatch)):  # every disagreement is next to the shipped class
        assert shipped[y, x] in padded[y:y + 5, x:x + 5]
    raw = read_png(Path(f"{CS_LABELS}labelIds.png"))
    for label_id in np.unique(raw):
        values, counts = np.unique(shipped[raw == label_id], return_counts=True)
        assert values[counts.argmax()] == SPEC_TRAIN_IDS.get(int(label_id), 255)


# ----------------------------------------------------------------------------- ADE20K


def test_ade20k_reduces_zero_label_and_accepts_both_roots(tmp_path, cache_dir):
    root = write_synthetic_ade20k(tmp_path / "ade", train_images=4, val_images=2)
    parent = Ade20k(split="eval", root=str(root))
    inner = Ade20k(split="eval", root=str(root / "ADEChallengeData2016"))
    assert [e.image for e in parent.entries] == [e.image for e in inner.entries] and len(parent) == 2
    assert len(parent.class_names) == 150 and parent.class_names[:3] == ["wall", "building", "sky"]
    assert parent.names_file is None
    saw_zero = saw_one = False
    for i in range(len(parent)):
        sample = parent[i]
        raw = read_png(parent.entries[i].label)
        expected = np.where(raw == 0, 255, raw.astype(np.int64) - 1)
        assert np.array_equal(sample.semantic.numpy(), expected)
        saw_zero |= bool((raw == 0).any())
        saw_one |= bool((raw == 1).any())
        assert ((sample.semantic.numpy() == 0) == (raw == 1)).all()  # ADE 1 (wall) -> class 0
    assert saw_zero and saw_one
    assert parent[0].meta["file_name"] == "images/validation/ADE_val_00000001.jpg"
    assert Ade20k(split="train", root=str(root)).split_name == "training"


def test_ade20k_reads_class_names_from_object_info(tmp_path):
    names = [f"thing {i}" for i in range(150)]
    root = write_synthetic_ade20k(tmp_path / "ade", train_images=1, val_images=1, class_names=names)
    data = Ade20k(split="eval", root=str(root))
    assert data.class_names == names and data[0].class_names == names
    info = root / "ADEChallengeData2016" / "objectInfo150.txt"
    info.write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="Idx 1..150"):
        Ade20k(split="eval", root=str(root))


@needs_shared
def test_shared_ade20k_images():
    data = Ade20k(split="eval", root=str(ADE_SHARED))
    # the dataset resolves its root; ../shared may be a symlink, so compare real paths
    assert len(data) == 3 and data.names_file == (ADE_SHARED / "objectInfo150.txt").resolve()
    assert len(data.class_names) == 150
    assert data.class_names[:8] == ["wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed"]
    assert data.class_names[-2:] == ["clock", "flag"]
    builtin = Ade20k(split="eval", root=str(ADE_SHARED / "ADEChallengeData2016"))
    assert builtin.names_file is None and builtin.class_names == data.class_names  # built-in list = the file
    for i in range(len(data)):
        sample = data[i]
        values = set(np.unique(sample.semantic.numpy()).tolist())
        assert values <= set(range(150)) | {255} and 255 in values and len(values) > 3
        raw = read_png(data.entries[i].label)
        assert np.array_equal(sample.semantic.numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))
        assert sample.image.shape[:2] == raw.shape


# ----------------------------------------------------------------------------- ACDC


def test_acdc_condition_filter_meta_and_layouts(tmp_path, cache_dir):
    root = write_synthetic_acdc(tmp_path / "acdc", train_images=2, val_images=1)
    every = Acdc(split="eval", root=str(root))
    assert [every[i].meta["condition"] for i in range(len(every))] == ["fog", "night", "rain", "snow"]
    night = Acdc(split="train", root=str(root), conditions=["night"])
    assert len(night) == 2
    for i in range(len(night)):
        sample = night[i]
        assert sample.meta["condition"] == "night"
        assert sample.meta["file_name"].startswith("rgb_anon/night/train/GOPR")
        assert sample.meta["prediction_path"].startswith("night/GOPR")
        assert "_rgb_anon" not in sample.meta["prediction_path"]
        raw_ids = read_png(Path(str(night.entries[i].label).replace("labelTrainIds", "labelIds")))
        assert np.array_equal(sample.semantic.numpy(), LABEL_ID_TO_TRAIN_ID[raw_ids].astype(np.int64))
    assert len(Acdc(split="eval", root=str(root), conditions="snow")) == 1
    download = write_synthetic_acdc(tmp_path / "download", train_images=1, val_images=1, conditions=("fog", "rain"),
                                    download_layout=True)
    fog = Acdc(split="eval", root=str(download), conditions=["fog"])
    assert fog[0].meta["file_name"].startswith("rgb_anon_trainvaltest/rgb_anon/fog/val/")
    with pytest.raises(DatasetError, match="night/val"):  # a condition that was not downloaded
        Acdc(split="eval", root=str(download), conditions=["night"])


def test_acdc_unknown_condition_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"fog, night, rain, snow.*'haze'"):
        Acdc(split="eval", root=str(tmp_path), conditions=["fog", "haze"])
    with pytest.raises(ConfigError, match="did you mean 'night'"):
        Acdc(split="eval", root=str(tmp_path), conditions="nigth")
    with pytest.raises(ConfigError, match="at least one"):
        Acdc(split="eval", root=str(tmp_path), conditions=[])


# ----------------------------------------------------------------------------- BDD100K


def test_bdd100k_keeps_train_ids_and_accepts_both_roots(tmp_path, cache_dir):
    parent = write_synthetic_bdd100k(tmp_path / "bdd", train_images=3, val_images=2)
    a = Bdd100k(split="eval", root=str(parent))
    b = Bdd100k(split="eval", root=str(parent / "bdd100k"))
    assert len(a) == len(b) == 2 and a.root == b.root == (parent / "bdd100k").resolve()
    for i in range(len(a)):
        sample = a[i]
        raw = read_png(a.entries[i].label)
        assert np.array_equal(sample.semantic.numpy(), raw.astype(np.int64)) and (raw == 255).any()
        assert sample.meta["file_name"] == f"images/10k/val/{sample.meta['prediction_path']}.jpg"
    assert len(Bdd100k(split="train", root=str(parent))) == 3


def test_bdd100k_value_outside_the_classes_is_an_error(tmp_path):
    parent = write_synthetic_bdd100k(tmp_path / "bdd", train_images=1, val_images=1)
    data = Bdd100k(split="eval", root=str(parent))
    raw = read_png(data.entries[0].label)
    raw[0, 0] = 40
    Image.fromarray(raw).save(data.entries[0].label)
    with pytest.raises(DatasetError, match=r"values 40 outside 0..18 and 255"):
        data[0]


# ----------------------------------------------------------------------------- Mapillary


EXPECTED_VISTAS = {
    "construction--flat--road": 0, "marking--general": 0, "construction--flat--sidewalk": 1, "nature--sky": 10,
    "construction--structure--building": 2, "nature--vegetation": 8, "construction--barrier--wall": 3,
    "construction--barrier--fence": 4, "object--support--pole": 5, "object--support--utility-pole": 5,
    "object--traffic-light": 6, "object--traffic-sign--front": 7, "nature--terrain": 9, "human--person": 11,
    "human--rider--bicyclist": 12, "human--rider--motorcyclist": 12, "human--rider--other-rider": 12,
    "object--vehicle--car": 13, "object--vehicle--truck": 14, "object--vehicle--bus": 15,
    "object--vehicle--on-rails": 16, "object--vehicle--motorcycle": 17, "object--vehicle--bicycle": 18,
    "object--bench": 255, "construction--barrier--guard-rail": 255, "construction--flat--parking": 255,
    "void--ego-vehicle": 255, "void--unlabeled": 255,
}


def test_mapillary_maps_v12_names_to_cityscapes(tmp_path, cache_dir):
    root = write_synthetic_mapillary(tmp_path / "vistas", train_images=8, val_images=2)
    data = Mapillary(split="train", root=str(root))
    assert data.class_names == CITYSCAPES_CLASSES and len(data.vistas_names) == 66
    with Image.open(data.entries[0].label) as png:
        assert png.mode == "P"
    seen = set()
    for i in range(len(data)):
        raw = read_png(data.entries[i].label)
        semantic = data[i].semantic.numpy()
        for index in np.unique(raw):
            name = MAPILLARY_V12_NAMES[index]
            assert (semantic[raw == index] == EXPECTED_VISTAS[name]).all(), name
            seen.add(name)
    assert {"human--rider--motorcyclist", "object--vehicle--on-rails", "object--bench", "void--ego-vehicle"} <= seen


def test_mapillary_mapping_follows_names_not_indices(tmp_path):
    root = write_synthetic_mapillary(tmp_path / "vistas", train_images=1, val_images=1)
    reference = Mapillary(split="eval", root=str(root))[0].semantic
    config = json.loads((root / "config_v1.2.json").read_text())
    road, sky = MAPILLARY_V12_NAMES.index("construction--flat--road"), MAPILLARY_V12_NAMES.index("nature--sky")
    labels = config["labels"]
    labels[road], labels[sky] = labels[sky], labels[road]  # index 13 now *named* sky, 27 road
    (root / "config_v1.2.json").unlink()
    (root / "config.json").write_text(json.dumps(config))  # the v1.2 download's file name
    swapped = Mapillary(split="eval", root=str(root))[0].semantic
    assert torch.equal(swapped[reference == 0], torch.full_like(swapped[reference == 0], 10))
    assert torch.equal(swapped[reference == 10], torch.zeros_like(swapped[reference == 10]))
    (root / "config.json").unlink()
    with pytest.raises(DatasetError, match=r"config_v1.2.json or config.json"):
        Mapillary(split="eval", root=str(root))


# ----------------------------------------------------------------------------- PASCAL-Context


def test_pascal_context_split_lists_and_reduce_zero_label(tmp_path, cache_dir):
    parent = write_synthetic_pascal_context(tmp_path / "pc", train_images=3, val_images=2)
    data = PascalContext(split="eval", root=str(parent))
    voc = parent / "VOCdevkit" / "VOC2010"
    assert len(PascalContext(split="eval", root=str(voc))) == len(data) == 2
    assert len(PascalContext(split="eval", root=str(parent / "VOCdevkit"))) == 2
    assert len(data.class_names) == 59 and data.class_names[:4] == ["aeroplane", "bag", "bed", "bedclothes"]
    assert data.class_names[-1] == "wood"
    listed = (voc / "ImageSets" / "SegmentationContext" / "val.txt").read_text().split()
    assert [s.meta["prediction_path"] for s in (data[i] for i in range(2))] == sorted(listed)
    for i in range(len(data)):
        raw = read_png(data.entries[i].label)
        assert (raw == 0).any()
        assert np.array_equal(data[i].semantic.numpy(), np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    (voc / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000004\n2099_000001\n")
    with pytest.raises(DatasetError, match=r"2099_000001.jpg"):
        PascalContext(split="eval", root=str(parent))


# ----------------------------------------------------------------------------- few-shot through the adapters


def test_few_shot_selection_is_saved_and_reloaded(cityscapes_big, cache_dir, tmp_path):
    root = str(cityscapes_big)
    run = tmp_path / "run"
    data = FewShotSubset(Cityscapes(split="train", root=root), shots=2, seed=0)
    data.write(run)
    again = FewShotSubset(Cityscapes(split="train", root=root), shots=2, seed=0)
    other = FewShotSubset(Cityscapes(split="train", root=root), shots=2, seed=1)
    files = [s.meta["file_name"] for s in (data[i] for i in range(len(data)))]
    assert files == [again.file_name(i) for i in again.indices]
    assert files != [other.file_name(i) for i in other.indices]
    assert 0 < len(data) < 30 and data.dataset.split_size == 30
    saved = json.loads((run / SELECTION_FILE).read_text())
    assert saved["files"] == files and saved["shots"] == 2 and saved["seed"] == 0 and saved["dataset"] == "cityscapes"
    assert saved["classes_covered"] == 19 and saved["images_in_split"] == 30
    presence = [set(np.unique(data[i].semantic.numpy()).tolist()) - {255} for i in range(len(data))]
    for c in range(19):  # every class is in >= 2 training images of the generated split
        assert sum(c in p for p in presence) >= 2, CITYSCAPES_CLASSES[c]
    reloaded = FewShotSubset(Cityscapes(split="train", root=root), file=str(run / SELECTION_FILE), shots=16, seed=5)
    assert [reloaded.file_name(i) for i in reloaded.indices] == files
    assert torch.equal(reloaded[1].semantic, data[1].semantic)
    assert len(Cityscapes(split="eval", root=root)) == 2  # the few-shot wrapper only goes around training


def test_selection_file_with_an_unknown_image_is_refused(cityscapes_big, cache_dir, tmp_path):
    bad = tmp_path / "selection.json"
    bad.write_text(json.dumps({"files": ["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                                         "leftImg8bit/train/ulm/ulm_000001_000019_leftImg8bit.png"]}))
    with pytest.raises(DatasetError, match=r"ulm_000001_000019_leftImg8bit.png.*not in the cityscapes 'train' split"):
        FewShotSubset(Cityscapes(split="train", root=str(cityscapes_big)), file=str(bad))
    with pytest.raises(DatasetError, match="few_shot.file not found"):
        FewShotSubset(Cityscapes(split="train", root=str(cityscapes_big)), file=str(tmp_path / "missing.json"))


def test_selection_is_written_on_the_main_rank_only(cityscapes_root, cache_dir, tmp_path, monkeypatch):
    cfg = composed_dataset("cityscapes", cityscapes_root, "dataset.few_shot.shots=1")
    monkeypatch.setattr(build.dist, "is_main", lambda: False)
    data = build.build_dataset(cfg, "train", tmp_path / "run")
    assert len(data) > 0 and not (tmp_path / "run" / SELECTION_FILE).exists()
    monkeypatch.setattr(build.dist, "is_main", lambda: True)
    assert len(build.build_dataset(cfg, "train", tmp_path / "run")) == len(data)
    assert (tmp_path / "run" / SELECTION_FILE).is_file()


def test_presence_cache_is_reused_and_a_corrupt_one_recomputed(cityscapes_big, cache_dir, monkeypatch):
    root = str(cityscapes_big)
    first = FewShotSubset(Cityscapes(split="train", root=root), shots=3)
    cached = list(cache_dir.glob("cityscapes-*.json"))
    assert len(cached) == 1
    original = semantic.read_label_png

    def refuse(path):
        raise AssertionError(f"label re-read: {path}")

    monkeypatch.setattr(semantic, "read_label_png", refuse)
    second = FewShotSubset(Cityscapes(split="train", root=root), shots=3)
    assert second.indices == first.indices
    cached[0].write_text('{"version": 1, "presence": [[0, 1], ')
    with pytest.raises(AssertionError, match="label re-read"):  # a corrupt cache is not trusted
        FewShotSubset(Cityscapes(split="train", root=root), shots=3)
    reads = []
    monkeypatch.setattr(semantic, "read_label_png", lambda path: reads.append(path) or original(path))
    third = FewShotSubset(Cityscapes(split="train", root=root), shots=3)
    assert len(reads) == 30 and third.indices == first.indices
    assert len(json.loads(cached[0].read_text())["presence"]) == 30
    monkeypatch.setattr(semantic, "read_label_png", refuse)
    FewShotSubset(Cityscapes(split="train", root=root), shots=3)  # rewritten cache is used again
    with pytest.raises(AssertionError, match="label re-read"):  # another label type: another index
        FewShotSubset(Cityscapes(split="train", root=root, label_type="labelIds"), shots=3)


# ----------------------------------------------------------------------------- errors and options


def test_clear_errors(cityscapes_root, tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found"):
        Cityscapes(split="eval", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="dataset.root"):
        Cityscapes(split="eval", root=None)
    empty = tmp_path / "empty"
    (empty / "leftImg8bit" / "val" / "frankfurt").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"leftImg8bit/val: scanned it recursively for '\*_leftImg8bit.png'"):
        Cityscapes(split="eval", root=str(empty))
    with pytest.raises(DatasetError, match="image folder not found: .*leftImg8bit/train"):
        Cityscapes(split="train", root=str(tmp_path / "empty"), train_split="train")
    with pytest.raises(ConfigError, match="label_type must be one of labelTrainIds, labelIds"):
        Cityscapes(split="eval", root=str(cityscapes_root), label_type="trainIds")
    with pytest.raises(ConfigError, match="shots must be an integer >= 1 or null"):
        FewShotSubset(Cityscapes(split="train", root=str(cityscapes_root)), shots=0)
    with pytest.raises(ConfigError, match="split must be 'train' or 'eval'"):
        Cityscapes(split="val", root=str(cityscapes_root))
    with pytest.raises(ConfigError, match="max_samples"):
        Cityscapes(split="eval", root=str(cityscapes_root), max_samples=0)
    with pytest.raises(DatasetError, match="ADE20K layout not found"):
        Ade20k(split="eval", root=str(tmp_path))


def test_missing_label_and_size_mismatch(tmp_path):
    root = write_synthetic_cityscapes(tmp_path / "cs", train_images=2, val_images=2)
    label = root / "gtFine" / "val" / "lindau" / "lindau_000001_000019_gtFine_labelTrainIds.png"
    image = root / "leftImg8bit" / "val" / "lindau" / "lindau_000001_000019_leftImg8bit.png"
    Image.fromarray(np.zeros((10, 20), dtype=np.uint8)).save(label)
    data = Cityscapes(split="eval", root=str(root))
    expected = rf"label map {re.escape(str(label.resolve()))} is 10x20 but image .*{image.name} is 64x128"
    with pytest.raises(DatasetError, match=expected):
        data[1]
    label.unlink()
    expected = rf"label map not found: .*{label.name} \(expected one for image .*{image.name}.*createTrainIdLabelImgs"
    with pytest.raises(DatasetError, match=expected):
        Cityscapes(split="eval", root=str(root))


def test_max_samples_keeps_the_first(cityscapes_root):
    full = Cityscapes(split="train", root=str(cityscapes_root))
    part = Cityscapes(split="train", root=str(cityscapes_root), max_samples=2)
    assert [e.image for e in part.entries] == [e.image for e in full.entries[:2]]


# ----------------------------------------------------------------------------- registry and configs


@pytest.mark.parametrize("name", NAMES)
def test_config_keys_are_the_constructor_keys(name):
    path = REPO / "conf" / "dataset" / f"{name}.yaml"
    cfg = OmegaConf.load(path)
    cls = DATASETS.get(name)
    assert cfg.name == name and SEMANTIC_FEW_SHOT in cls.TASKS
    parameters = inspect.signature(cls).parameters
    assert set(cfg.keys()) - {"name", "few_shot"} == set(parameters) - {"split"}
    wrapper = inspect.signature(FewShotSubset).parameters
    assert set(cfg.few_shot) == set(wrapper) - {"dataset", "max_samples"} == set(build.FEW_SHOT_KEYS)
    for key, value in cfg.few_shot.items():
        assert value == wrapper[key].default, key
    values = OmegaConf.to_container(cfg)
    split_names = dict(zip(("train_split", "eval_split"), cls.SPLIT_NAMES))  # what a None default reads
    for key in set(values) - {"name", "root", "few_shot"}:
        default = parameters[key].default
        if default is None and key in split_names:
            default = split_names[key]
        assert values[key] == (list(default) if isinstance(default, tuple) else default), key
    assert values["root"].startswith("${oc.env:SAMBENCH_DATA,data}/")
    for line in path.read_text().splitlines():
        if re.match(r"^\s*\w+:", line) and not line.startswith("name:"):
            assert "#" in line, f"uncommented key in {path.name}: {line}"
