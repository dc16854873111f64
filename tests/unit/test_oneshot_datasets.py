"""COCO-20i, FSS-1000 and LVIS-92i: generated copies of the real layouts, episodes equal to the
official loaders' draw (re-implemented here on numpy's global legacy generator after
``np.random.seed(0)``, as HSNet's and Matcher's test scripts seed it), masks equal to masks
computed here from the files, the saved episode list, clear errors, and FB-IoU / mIoU by hand."""

from __future__ import annotations

import glob
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_util

from sambench import tasks
from sambench.cli.build import build_dataset
from sambench.errors import ConfigError, DatasetError
from sambench.evaluation.personalization import PersonalizationEvaluator
from sambench.registry import DATASETS, load_plugins
from sambench.structures import Batch, Prediction, Sample
from sambench.testing.oneshot_synthetic import (
    write_synthetic_coco20i, write_synthetic_fss1000, write_synthetic_lvis92i,
)

load_plugins()
Coco20i, Fss1000, Lvis92i = (DATASETS.get(name) for name in ("coco20i", "fss1000", "lvis92i"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_synthetic_coco20i(tmp_path_factory.mktemp("coco") / "COCO2014", folds=(0, 1), empty_mask=True)


@pytest.fixture(scope="module")
def fss_root(tmp_path_factory) -> Path:
    return write_synthetic_fss1000(tmp_path_factory.mktemp("fss") / "FSS-1000")


@pytest.fixture(scope="module")
def lvis_root(tmp_path_factory) -> Path:
    return write_synthetic_lvis92i(tmp_path_factory.mktemp("lvis") / "LVIS")


# --------------------------------------------------------------------------- the official draws


def hsnet_coco_episodes(root: Path, fold: int, count: int) -> list[tuple]:
    """HSNet data/coco.py (build_class_ids, load_frame; shot 1) after utils.fix_randseed(0)."""
    np.random.seed(0)
    with open(root / "splits" / "val" / f"fold{fold}.pkl", "rb") as f:  # the file this test wrote
        img_metadata_classwise = pickle.load(f)
    class_ids = [fold + 4 * v for v in range(80 // 4)]
    episodes = []
    for _ in range(count):
        class_sample = np.random.choice(class_ids, 1, replace=False)[0]
        query_name = np.random.choice(img_metadata_classwise[class_sample], 1, replace=False)[0]
        support_names = []
        while True:
            support_name = np.random.choice(img_metadata_classwise[class_sample], 1, replace=False)[0]
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == 1:
                break
        episodes.append((int(class_sample), str(query_name), str(support_names[0])))
    return episodes


def hsnet_fss_episodes(base_path: Path, split_file: Path) -> list[tuple]:
    """HSNet data/fss.py (categories, build_img_metadata, sample_episode; shot 1) after fix_randseed(0)."""
    np.random.seed(0)
    with open(split_file, "r") as f:
        categories = sorted(f.read().split("\n")[:-1])
    img_metadata = []
    for cat in categories:
        img_paths = sorted([path for path in glob.glob("%s/*" % os.path.join(str(base_path), cat))])
        for img_path in img_paths:
            if os.path.basename(img_path).split(".")[1] == "jpg":
                img_metadata.append(img_path)
    episodes = []
    for query_name in img_metadata:
        support_names = []
        while True:
            support_name = np.random.choice(range(1, 11), 1, replace=False)[0]
            support_name = os.path.join(os.path.dirname(query_name), str(support_name)) + ".jpg"
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == 1:
                break
        relative = lambda p: os.path.relpath(p, base_path).replace(os.sep, "/")  # noqa: E731
        episodes.append((query_name.split("/")[-2], relative(query_name), relative(support_names[0])))
    return episodes


def matcher_lvis_episodes(root: Path, fold: int, count: int) -> list[tuple]:
    """Matcher matcher/data/lvis.py (build_img_metadata_classwise, __getitem__, load_frame; shot 1)."""
    np.random.seed(0)
    with open(root / "lvis_val.pkl", "rb") as f:  # the file this test wrote
        val_anno = pickle.load(f)
    val_cat_ids = [i for i in list(val_anno.keys()) if len(val_anno[i]) > 1]
    class_ids_val = [val_cat_ids[fold + 10 * v] for v in range(len(val_cat_ids) // 10)]
    episodes = []
    for idx in range(count):
        class_sample = class_ids_val[idx % len(class_ids_val)]
        query_name = np.random.choice(list(val_anno[class_sample].keys()), 1, replace=False)[0]
        support_names = []
        while True:
            support_name = np.random.choice(list(val_anno[class_sample].keys()), 1, replace=False)[0]
            if query_name != support_name:
                support_names.append(support_name)
            if len(support_names) == 1:
                break
        episodes.append((class_sample, str(query_name), str(support_names[0])))
    return episodes


def as_tuples(dataset) -> list[tuple]:
    return [(e["class"], e["query"], e["support"]) for e in dataset.episodes]


def test_coco20i_seed0_episodes_are_hsnets(coco_root):
    for fold in (0, 1):
        dataset = Coco20i(split="eval", root=str(coco_root), fold=fold)
        assert len(dataset) == 1000
        assert as_tuples(dataset) == hsnet_coco_episodes(coco_root, fold, 1000)
        assert dataset.class_names[:5] == (["person", "airplane", "boat", "parking meter", "dog"] if fold == 0
                                           else ["bicycle", "bus", "traffic light", "bench", "horse"])
    assert as_tuples(Coco20i(split="eval", root=str(coco_root), seed=1, episodes=50)) != hsnet_coco_episodes(coco_root, 0, 50)
    assert as_tuples(Coco20i(split="eval", root=str(coco_root), episodes=37)) == hsnet_coco_episodes(coco_root, 0, 37)


@pytest.mark.parametrize("matcher_layout", [False, True])
def test_fss1000_seed0_episodes_are_hsnets(tmp_path, matcher_layout):
    root = write_synthetic_fss1000(tmp_path / "FSS-1000", matcher_layout=matcher_layout)
    dataset = Fss1000(split="eval", root=str(root))
    base = root / "data" if matcher_layout else root
    assert as_tuples(dataset) == hsnet_fss_episodes(base, root / "splits" / "test.txt")
    assert len(dataset) == 30 and dataset.class_names == ["burj_al", "bus", "hotel_slipper"]  # ab_wheel: not listed
    assert [e["query"] for e in dataset.episodes[:3]] == ["burj_al/1.jpg", "burj_al/10.jpg", "burj_al/2.jpg"]


def test_lvis92i_seed0_episodes_are_matchers(lvis_root):
    for fold in (0, 9):
        dataset = Lvis92i(split="eval", root=str(lvis_root), fold=fold)
        assert len(dataset) == 2300
        assert as_tuples(dataset) == matcher_lvis_episodes(lvis_root, fold, 2300)
        assert dataset.class_names == [str(c) for c in dataset.class_ids] and len(dataset.class_ids) == 2


# --------------------------------------------------------------------------- masks and samples


def check_sample(sample: Sample, image: np.ndarray, mask: np.ndarray, support: np.ndarray, support_mask: np.ndarray):
    assert sample.image.dtype == np.uint8 and np.array_equal(sample.image, image)
    assert sample.masks.dtype == torch.bool and sample.masks.shape == (1, *image.shape[:2])
    assert np.array_equal(sample.masks[0].numpy(), mask)
    (reference,) = sample.references
    assert np.array_equal(reference.image, support)
    assert reference.mask_rgb.dtype == np.uint8 and set(np.unique(reference.mask_rgb)) <= {0, 255}
    assert all(np.array_equal(reference.mask_rgb[..., k] == 255, support_mask) for k in range(3))
    assert tasks.PERSONALIZE.missing_fields(sample) == []


def test_coco20i_masks_and_meta(coco_root):
    dataset = Coco20i(split="eval", root=str(coco_root), episodes=40)
    names = ["person", "airplane", "boat", "parking meter", "dog"]
    for index in range(40):
        episode, sample = dataset.episodes[index], dataset[index]
        c = episode["class"]

        def read(name):
            image = np.array(Image.open(coco_root / name).convert("RGB"))
            labels = np.array(Image.open(coco_root / "annotations" / name.replace(".jpg", ".png")))
            return image, labels == c + 1

        check_sample(sample, *read(episode["query"]), *read(episode["support"]))
        meta = sample.meta
        assert meta["object"] == dataset.class_names[meta["class_id"]] and dataset.class_ids[meta["class_id"]] == c
        assert (meta["query"], meta["support"], meta["episode"], meta["name"]) == (
            episode["query"], episode["support"], index, f"{index:05d}")
        assert meta["prediction_path"] == f"{meta['object'].replace(' ', '_')}/{index:05d}"
        assert "/" not in meta["concept"] and " " not in meta["concept"]
        assert sample.references[0].name == f"{meta['object']}/{episode['support']}"
    assert dataset.class_names[:5] == names
    # image 0 is listed for a class it holds no pixel of (as some of HSNet's list entries): an empty mask, no error
    name, empty = "val2014/COCO_val2014_000000000100.jpg", []
    for fold in (0, 1):
        data = Coco20i(split="eval", root=str(coco_root), fold=fold, episodes=1)
        for c in data.class_ids:
            if name in data.candidates(c):
                image, mask = data.read(c, name)
                assert mask.shape == image.shape[:2]
                empty += [] if mask.any() else [c]
    assert empty == [69]  # oven, the last class written for image 0


def test_fss1000_masks_threshold_at_128(fss_root):
    dataset = Fss1000(split="eval", root=str(fss_root))

    def read(name):
        image = np.array(Image.open(fss_root / name).convert("RGB"))
        return image, np.array(Image.open(fss_root / name.replace(".jpg", ".png")).convert("L")) >= 128

    for index in range(len(dataset)):
        episode = dataset.episodes[index]
        check_sample(dataset[index], *read(episode["query"]), *read(episode["support"]))
    queries = [e["query"] for e in dataset.episodes]
    for name in ("bus/1", "hotel_slipper/1"):  # an RGB and a grayscale mask holding 127 (background) and 128
        mask = dataset[queries.index(f"{name}.jpg")].masks[0].numpy()
        gray = np.array(Image.open(fss_root / f"{name}.png").convert("L"))
        assert (gray == 127).any() and not mask[gray == 127].any()  # as HSNet's mask[mask < 128] = 0
        assert (gray == 255).any() and mask[gray == 255].all()
    rgb = np.array(Image.open(fss_root / "bus/1.png"))
    assert rgb.ndim == 3 and (rgb[..., 0] == 200).any()  # reddish: red >= 128 but L = 101 -> background
    assert not dataset[queries.index("bus/1.jpg")].masks[0].numpy()[rgb[..., 0] == 200].any()


def test_lvis92i_masks_are_the_union_of_annotations(lvis_root):
    dataset = Lvis92i(split="eval", root=str(lvis_root), fold=0, episodes=30)
    with open(lvis_root / "lvis_val.pkl", "rb") as f:  # the file this test wrote
        annotations = pickle.load(f)
    kinds = set()

    def read(class_id, name):
        image = Image.open(lvis_root / "coco" / name).convert("RGB")
        width, height = image.size
        masks = []
        for anno in annotations[class_id][name]["annotations"]:
            segm = anno["segmentation"]
            if isinstance(segm, list):
                kinds.add("polygon")
                masks.append(mask_util.decode(mask_util.merge(mask_util.frPyObjects(segm, height, width))))
            elif isinstance(segm["counts"], list):
                kinds.add("rle list")
                masks.append(mask_util.decode(mask_util.frPyObjects(segm, height, width)))
            else:
                kinds.add(f"rle {type(segm['counts']).__name__}")
                masks.append(mask_util.decode(segm))
        return np.array(image), np.stack(masks).sum(0) > 0

    for fold in range(10):
        data = Lvis92i(split="eval", root=str(lvis_root), fold=fold, episodes=6)
        for index, episode in enumerate(data.episodes):
            check_sample(data[index], *read(episode["class"], episode["query"]), *read(episode["class"], episode["support"]))
    assert len(dataset) == 30
    assert kinds == {"polygon", "rle list", "rle str", "rle bytes"}


# --------------------------------------------------------------------------- saved episode lists


@pytest.mark.parametrize("name", ["coco20i", "fss1000", "lvis92i"])
def test_episode_list_round_trip(name, coco_root, fss_root, lvis_root, tmp_path):
    root = {"coco20i": coco_root, "fss1000": fss_root, "lvis92i": lvis_root}[name]
    extra = {} if name == "fss1000" else {"episodes": 12}
    first = DATASETS.get(name)(split="eval", root=str(root), seed=5, **extra)
    path = first.write_episodes(tmp_path / "run")
    assert path == tmp_path / "run" / "episodes.json"
    saved = json.loads(path.read_text())
    assert (saved["dataset"], saved["seed"], saved["num_episodes"]) == (name, 5, len(first))
    again = DATASETS.get(name)(split="eval", root=str(root), episodes_file=str(path))
    assert again.episodes == first.episodes
    for index in (0, len(first) - 1):
        a, b = first[index], again[index]
        assert np.array_equal(a.image, b.image) and torch.equal(a.masks, b.masks) and a.meta == b.meta
        assert np.array_equal(a.references[0].mask_rgb, b.references[0].mask_rgb)
        assert a.references[0].name == b.references[0].name


def test_build_dataset_saves_the_episode_list_of_the_evaluation_split(coco_root, tmp_path):
    cfg = OmegaConf.create({"dataset": {"name": "coco20i", "root": str(coco_root), "fold": 0, "episodes": 7,
                                        "seed": 0, "episodes_file": None, "split_file": None, "max_samples": 4}})
    dataset = build_dataset(cfg, "train", tmp_path / "train_run")
    assert len(dataset) == 4 and not (tmp_path / "train_run" / "episodes.json").exists()
    dataset = build_dataset(cfg, "eval", tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "episodes.json").read_text())
    assert [tuple(e.values()) for e in saved["episodes"]] == hsnet_coco_episodes(coco_root, 0, 4)
    cfg.dataset.episodes_file = str(tmp_path / "run" / "episodes.json")
    cfg.dataset.max_samples = None
    assert build_dataset(cfg, "eval").episodes == dataset.episodes


# --------------------------------------------------------------------------- errors


def test_missing_split_files_say_where_to_get_them(coco_root, fss_root, lvis_root, tmp_path):
    with pytest.raises(DatasetError, match=r"split file not found: .*fold2\.pkl.*data/splits/coco/val/fold<i>\.pkl"):
        Coco20i(split="eval", root=str(coco_root), fold=2)
    shutil.copytree(fss_root, tmp_path / "fss")
    (tmp_path / "fss" / "splits" / "test.txt").unlink()
    with pytest.raises(DatasetError, match=r"class list not found: .*test\.txt.*data/splits/fss/test\.txt"):
        Fss1000(split="eval", root=str(tmp_path / "fss"))
    # split_file=: absolute or relative to the root
    shutil.copy(fss_root / "splits" / "test.txt", tmp_path / "list.txt")
    assert len(Fss1000(split="eval", root=str(tmp_path / "fss"), split_file=str(tmp_path / "list.txt"))) == 30
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        Fss1000(split="eval", root=str(tmp_path / "fss"), split_file="../list.txt")
    with pytest.raises(DatasetError, match=r"LVIS-92i annotation file not found: .*lvis_val\.pkl"):
        Lvis92i(split="eval", root=str(lvis_root), split_file="lvis_train.pkl")


def test_a_listed_image_that_is_missing_is_named(coco_root, tmp_path):
    root = tmp_path / "COCO2014"
    shutil.copytree(coco_root, root)
    episode = Coco20i(split="eval", root=str(root), episodes=3).episodes[2]
    (root / episode["support"]).unlink()
    with pytest.raises(DatasetError, match=rf"episode \d: (query|support) file not found: .*{episode['support']}"):
        Coco20i(split="eval", root=str(root), episodes=3)
    shutil.copy(coco_root / episode["support"], root / episode["support"])
    mask = "annotations/" + episode["query"].replace(".jpg", ".png")
    (root / mask).unlink()
    with pytest.raises(DatasetError, match=rf"(query|support) file not found: .*{mask}"):
        Coco20i(split="eval", root=str(root), episodes=3)


def test_wrong_fold_and_foreign_episode_lists_are_refused(coco_root, lvis_root, tmp_path):
    with pytest.raises(ConfigError, match="fold must be 0..3, got 4"):
        Coco20i(split="eval", root=str(coco_root), fold=4)
    with pytest.raises(ConfigError, match="fold must be 0..9, got 10"):
        Lvis92i(split="eval", root=str(lvis_root), fold=10)
    path = Coco20i(split="eval", root=str(coco_root), episodes=5).write_episodes(tmp_path)
    with pytest.raises(DatasetError, match=r"class \d+, which is not a class of coco20i fold 1"):
        Coco20i(split="eval", root=str(coco_root), fold=1, episodes_file=str(path))
    with pytest.raises(DatasetError, match="holds coco20i episodes; this dataset is lvis92i"):
        Lvis92i(split="eval", root=str(lvis_root), episodes_file=str(path))
    data = json.loads(path.read_text())
    data["episodes"][1]["support"] = "val2014/../../../etc/passwd.jpg"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="episode 1's support 'val2014/../../../etc/passwd.jpg' is not an image"):
        Coco20i(split="eval", root=str(coco_root), episodes_file=str(path))
    data["episodes"][1]["support"] = data["episodes"][1]["query"]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="as its own support"):
        Coco20i(split="eval", root=str(coco_root), episodes_file=str(path))
    with pytest.raises(DatasetError, match="episodes_file .*missing.json not found"):
        Coco20i(split="eval", root=str(coco_root), episodes_file=str(tmp_path / "missing.json"))


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_split_pickles_with_code_are_refused_unread(coco_root, tmp_path):
    root = tmp_path / "COCO2014"
    shutil.copytree(coco_root, root)
    with open(root / "splits" / "val" / "fold0.pkl", "wb") as f:
        pickle.dump({0: [_Boom()]}, f)
    with pytest.raises(DatasetError, match="tries to load the global 'posix.system'|tries to load the global 'os.system'"):
        Coco20i(split="eval", root=str(root))
    with open(root / "splits" / "val" / "fold0.pkl", "wb") as f:
        pickle.dump({0: ["val2014/COCO_val2014_000000000100.jpg"]}, f)
    with pytest.raises(DatasetError, match=r"lists 1 image\(s\) for class 0 \(person\)"):
        Coco20i(split="eval", root=str(root))


def test_fss_class_list_without_final_newline_is_refused(fss_root, tmp_path):
    shutil.copytree(fss_root, tmp_path / "fss")
    (tmp_path / "fss" / "splits" / "test.txt").write_text("bus\nburj_al")
    with pytest.raises(DatasetError, match="does not end with a newline"):
        Fss1000(split="eval", root=str(tmp_path / "fss"))


# --------------------------------------------------------------------------- FB-IoU and mIoU by hand


def _pair(index: int, obj: str, gt: np.ndarray, pred: np.ndarray) -> tuple[Sample, Prediction]:
    sample = Sample(index=index, image=np.zeros((*gt.shape, 3), np.uint8), masks=torch.from_numpy(gt[None]),
                    meta={"object": obj})
    return sample, Prediction(index=index, masks=torch.from_numpy(pred[None]))


def test_fb_iou_and_miou_by_hand():
    gt1, pred1 = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    gt1[:2], pred1[:3] = True, True           # fg I 8 U 12; bg: ~pred row 3 (4), ~gt rows 2-3 (8): I 4 U 8
    gt2, pred2 = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    gt2[0] = True                             # fg I 0 U 4; bg I 12 U 16
    gt3, pred3 = np.zeros((2, 5), bool), np.zeros((2, 5), bool)
    gt3[:, :2], pred3[:, 1:3] = True, True    # fg I 2 U 6; bg: ~pred cols 0,3,4, ~gt cols 2,3,4: I 4 U 8
    pairs = [_pair(0, "a", gt1, pred1), _pair(1, "a", gt2, pred2), _pair(2, "b", gt3, pred3)]
    evaluator = PersonalizationEvaluator(class_names=None)
    evaluator.process(Batch([p[0] for p in pairs]), [p[1] for p in pairs])
    result = evaluator.compute()
    # FB-IoU = mean(fg ΣI/ΣU = (8+0+2)/(12+4+6), bg ΣI/ΣU = (4+12+4)/(8+16+8)) × 100
    assert result["FB-IoU"] == pytest.approx((10 / 22 + 20 / 32) / 2 * 100)
    # mIoU = mean over classes of ΣI/ΣU: a (8+0)/(12+4), b 2/6
    assert result["mIoU"] == pytest.approx((8 / 16 + 2 / 6) / 2 * 100)
    assert result["per_object"]["a"]["IoU"] == pytest.approx(50.0)
    records = evaluator.gathered()
    assert [(r["background_intersection"], r["background_union"]) for r in records] == [(4, 8), (12, 16), (4, 8)]


def test_fb_iou_of_a_perfect_and_an_empty_prediction():
    gt = np.zeros((3, 3), bool)
    gt[1, 1] = True
    evaluator = PersonalizationEvaluator(class_names=None)
    evaluator.process(Batch([_pair(0, "a", gt, gt)[0]]), [_pair(0, "a", gt, gt)[1]])
    assert evaluator.compute()["FB-IoU"] == pytest.approx(100.0)
    evaluator = PersonalizationEvaluator(class_names=None)
    sample, prediction = _pair(0, "a", gt, np.zeros_like(gt))
    evaluator.process(Batch([sample]), [prediction])
    assert evaluator.compute()["FB-IoU"] == pytest.approx((0 + 8 / 9) / 2 * 100)  # fg 0/1, bg 8/9


def test_persam_f_names_weights_by_the_concept():
    from sambench.registry import METHODS

    persam_f = METHODS.get("persam_f")
    sample = Sample(index=0, image=np.zeros((2, 2, 3), np.uint8), meta={"object": "dog", "concept": "dog__val2014_x"})
    assert persam_f.concept_name(None, sample) == "dog__val2014_x"
    sample.meta.pop("concept")
    assert persam_f.concept_name(None, sample) == "dog"
