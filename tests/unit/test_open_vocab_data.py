"""Open-vocabulary instance data (coco_ov, coco, lvis) and the open_vocab evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sambench.testing import SHARED_DATA, needs_shared

from sambench.tasks import OPEN_VOCAB_INSTANCE
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.testing.lvis_synthetic import RARE_IDS, write_synthetic_lvis
from sambench.data.open_vocab import COCO_BASE_IDS, COCO_NOVEL_IDS, synonyms
from sambench.errors import ConfigError
from sambench.evaluation.open_vocab import OpenVocabEvaluator, apply_numpy_float_shim
from sambench.registry import DATASETS, EVALUATORS, load_plugins
from sambench.structures import Batch, Detection, Prediction, Sample

load_plugins()
COCO_TINY = SHARED_DATA / "coco_tiny"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("couch,sofa,sofas", ["couch", "sofa", "sofas"]),
        ("car_(automobile)", ["car (automobile)"]),
        ("Orange fruit", ["orange fruit"]),
        ("knife_or_blade/cutter", ["knife", "blade", "cutter"]),
        ("tv, ,Television_set,", ["tv", "television set"]),
    ],
)
def test_synonyms(name, expected):
    assert synonyms(name) == expected


def test_coco_split_ids():
    assert len(COCO_BASE_IDS) == 48 and len(set(COCO_BASE_IDS)) == 48
    assert len(COCO_NOVEL_IDS) == 17 and len(set(COCO_NOVEL_IDS)) == 17
    assert not set(COCO_BASE_IDS) & set(COCO_NOVEL_IDS)
    assert {5, 6, 17, 18, 63, 87} <= set(COCO_NOVEL_IDS) and {1, 90, 72} <= set(COCO_BASE_IDS)
    # the 15 classes in neither set: traffic light 10, fire hydrant 11, ..., hair drier 89
    assert not {10, 11, 13, 14, 37, 39, 40, 43, 46, 58, 64, 67, 77, 88, 89} & (set(COCO_BASE_IDS) | set(COCO_NOVEL_IDS))


def _images_with(ann_file, allowed):
    data = json.loads(ann_file.read_text())
    return {a["image_id"] for a in data["annotations"] if a["category_id"] in allowed and not a.get("iscrowd", 0)}


@needs_shared
def test_coco_ov_train_keeps_only_base():
    dataset = DATASETS.get("coco_ov")(split="train", root=str(COCO_TINY))
    assert dataset.TASKS == (OPEN_VOCAB_INSTANCE,)
    assert dataset.category_ids == sorted(COCO_BASE_IDS) and len(dataset.class_names) == 48
    assert not any(dataset.novel)
    expected = _images_with(COCO_TINY / "annotations/instances_train2017.json", set(COCO_BASE_IDS))
    all_images = _images_with(COCO_TINY / "annotations/instances_train2017.json", set(range(1, 91)))
    assert expected < all_images  # the sample has images with only non-base instances
    assert {image["id"] for image, _ in dataset.entries} == expected
    for image, anns in dataset.entries:
        assert all(ann["category_id"] in COCO_BASE_IDS for ann in anns)
    sample = dataset[0]
    assert sample.masks.dtype == torch.bool and sample.masks.shape[0] == len(sample.meta["ann_ids"])
    assert sample.boxes.shape == (sample.masks.shape[0], 4)
    assert all(dataset.category_ids[c] in COCO_BASE_IDS for c in sample.class_ids.tolist())
    assert sample.class_names is dataset.class_names
    assert dataset.ann_file_path.endswith("instances_train2017.json")


@needs_shared
def test_coco_ov_eval_has_65_classes_17_novel():
    dataset = DATASETS.get("coco_ov")(split="eval", root=str(COCO_TINY))
    assert len(dataset.class_names) == 65 and sum(dataset.novel) == 17
    assert {cid for cid, nov in zip(dataset.category_ids, dataset.novel) if nov} == set(COCO_NOVEL_IDS)
    assert "couch" in [n for n, nov in zip(dataset.class_names, dataset.novel) if nov]
    allowed = set(COCO_BASE_IDS) | set(COCO_NOVEL_IDS)
    assert {image["id"] for image, _ in dataset.entries} == _images_with(
        COCO_TINY / "annotations/instances_val2017.json", allowed
    )
    data = json.loads((COCO_TINY / "annotations/instances_val2017.json").read_text())
    kept_ids = {ann["id"] for _, anns in dataset.entries for ann in anns}
    expected_ids = {a["id"] for a in data["annotations"] if a["category_id"] in allowed and not a.get("iscrowd", 0)}
    assert kept_ids == expected_ids
    sample = dataset[1]
    by_id = {a["id"]: a for a in data["annotations"]}
    assert [dataset.category_ids[c] for c in sample.class_ids.tolist()] == [
        by_id[i]["category_id"] for i in sample.meta["ann_ids"]
    ]


@needs_shared
def test_coco_has_80_classes_and_limits():
    dataset = DATASETS.get("coco")(split="eval", root=str(COCO_TINY), max_images=3)
    assert len(dataset.class_names) == 80 and not any(dataset.novel) and len(dataset) == 3
    with pytest.raises(ConfigError):
        DATASETS.get("coco")(split="test", root=str(COCO_TINY))


@pytest.fixture
def lvis_root(tmp_path):
    return write_synthetic_lvis(tmp_path / "lvis", num_images=4, seed=0)


def test_lvis_paths_from_coco_url(lvis_root):
    dataset = DATASETS.get("lvis")(split="eval", root=str(lvis_root))
    data = json.loads((lvis_root / "annotations/lvis_v1_val.json").read_text())
    urls = {image["id"]: image["coco_url"] for image in data["images"]}
    folders = set()
    for index in range(len(dataset)):
        sample = dataset[index]
        name = sample.meta["file_name"]
        assert urls[sample.meta["image_id"]].endswith("/" + name)
        folders.add(name.split("/")[0])
        image_info = next(i for i in data["images"] if i["id"] == sample.meta["image_id"])
        assert sample.image.shape[:2] == (image_info["height"], image_info["width"])
        assert sample.masks.shape[1:] == sample.image.shape[:2] and sample.masks.any(dim=(1, 2)).all()
    assert folders == {"train2017", "val2017"}  # never one assumed folder


def test_lvis_samples_carry_their_negative_classes_coco_samples_none(lvis_root, tmp_path):
    negatives = {image["id"]: image["neg_category_ids"] for split in ("train", "val")
                 for image in json.loads((lvis_root / f"annotations/lvis_v1_{split}.json").read_text())["images"]}
    train = DATASETS.get("lvis")(split="train", root=str(lvis_root))  # rare categories are not in its vocabulary
    for dataset in (DATASETS.get("lvis")(split="eval", root=str(lvis_root)), train):
        seen = 0
        for index in range(len(dataset)):
            sample = dataset[index]
            expected = sorted(dataset.category_ids.index(c) for c in negatives[sample.meta["image_id"]]
                              if c in dataset.category_ids)
            assert sample.meta["neg_class_ids"] == expected
            seen += len(expected)
        assert seen > 0
    coco = DATASETS.get("coco_ov")(split="eval", root=str(write_synthetic_coco(tmp_path / "coco", num_images=2)))
    assert coco[0].meta["neg_class_ids"] is None


def test_lvis_train_drops_rare_and_eval_flags_rare_novel(lvis_root):
    lvis = DATASETS.get("lvis")
    train = lvis(split="train", root=str(lvis_root))
    assert not set(train.category_ids) & set(RARE_IDS) and len(train.class_names) == 4
    assert "r" not in train.frequency and not any(train.novel)
    assert len(train) == 3  # image 0 holds only rare instances
    for _, anns in train.entries:
        assert all(ann["category_id"] not in RARE_IDS for ann in anns)
    with_rare = lvis(split="train", root=str(lvis_root), train_without_rare=False)
    assert len(with_rare) == 4 and len(with_rare.class_names) == 6
    evaluation = lvis(split="eval", root=str(lvis_root))
    assert len(evaluation) == 4
    assert evaluation.novel == [freq == "r" for freq in evaluation.frequency]
    assert [c for c, n in zip(evaluation.category_ids, evaluation.novel) if n] == list(RARE_IDS)
    assert evaluation.class_names[0] == "car_(automobile)"
    assert evaluation.class_synonyms[1] == ["sofa", "couch", "lounge"]


def _sample(index, masks, classes, image_id=None):
    masks = torch.as_tensor(np.asarray(masks, dtype=bool))
    return Sample(index=index, image=np.zeros((*masks.shape[1:], 3), np.uint8), masks=masks,
                  class_ids=torch.tensor(classes), meta={"image_id": image_id if image_id is not None else index})


def test_open_vocab_iou_and_accuracy_hand_computed():
    gt_a = np.zeros((2, 4, 4), bool)
    gt_a[0, :2, :2] = True  # 4 px, base class 0
    gt_a[1, 2:, :2] = True  # 4 px, novel class 1
    pred_a = np.zeros_like(gt_a)
    pred_a[0] = gt_a[0]  # IoU 1
    pred_a[1, 2:, 0] = True  # 2 of 4 px -> IoU 0.5
    gt_b = np.zeros((1, 4, 4), bool)
    gt_b[0, :2, 2:] = True  # 4 px, base class 2
    pred_b = np.zeros_like(gt_b)
    pred_b[0, 1, 1:3] = True  # 1 px inside, union 5 -> IoU 0.2
    evaluator = EVALUATORS.get("open_vocab")(novel=[False, True, False])
    batch = Batch([_sample(0, gt_a, [0, 1]), _sample(1, gt_b, [2])])
    predictions = [
        Prediction(index=0, masks=torch.from_numpy(pred_a), class_ids=torch.tensor([0, 2])),
        Prediction(index=1, masks=torch.from_numpy(pred_b), class_ids=torch.tensor([2])),
    ]
    evaluator.process(batch, predictions)
    # sampler padding: a repeated index is ignored
    evaluator.process(Batch([_sample(1, gt_b, [2])]), [Prediction(index=1, masks=torch.from_numpy(gt_b), class_ids=torch.tensor([0]))])
    result = evaluator.compute()
    assert result["IoU"] == pytest.approx((1 + 0.5 + 0.2) / 3 * 100, abs=1e-4)
    assert result["IoU_base"] == pytest.approx((1 + 0.2) / 2 * 100, abs=1e-4)
    assert result["IoU_novel"] == pytest.approx(50.0, abs=1e-4)
    assert result["Acc"] == pytest.approx(200 / 3)
    assert result["Acc_base"] == pytest.approx(100.0) and result["Acc_novel"] == pytest.approx(0.0)
    assert result["num_instances"] == 3 and "AP" not in result


def test_open_vocab_without_novel_or_classes():
    gt = np.zeros((1, 3, 3), bool)
    gt[0, 0] = True
    evaluator = OpenVocabEvaluator()
    evaluator.process(Batch([_sample(0, gt, [0])]), [Prediction(index=0, masks=torch.from_numpy(np.zeros_like(gt)))])
    result = evaluator.compute()
    assert result["IoU"] == 0.0 and result["IoU_base"] == 0.0 and result["IoU_novel"] is None
    assert result["Acc"] is None
    with pytest.raises(ValueError, match="expected one per GT instance"):
        evaluator.record(_sample(1, gt, [0]), Prediction(index=1, masks=torch.zeros(2, 3, 3, dtype=torch.bool)))


def _detections(sample, rng, num_classes):
    """GT masks shifted by a few pixels, random scores, some wrong classes, plus duplicates."""
    dets = []
    for mask, cls in zip(sample.masks.numpy(), sample.class_ids.tolist()):
        for _ in range(2):
            shifted = np.roll(mask, shift=(int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
            label = cls if rng.random() < 0.8 else int(rng.integers(num_classes))
            ys, xs = np.nonzero(shifted)
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if len(xs) else [0, 0, 1, 1]
            dets.append(Detection(bbox=box, score=float(rng.random()), class_id=label, mask=torch.from_numpy(shifted)))
    return dets


def _run_detection_eval(dataset, evaluator, seed=0):
    rng = np.random.default_rng(seed)
    for index in range(len(dataset)):
        sample = dataset[index]
        dets = _detections(sample, rng, len(dataset.class_names))
        evaluator.process(Batch([sample]), [Prediction(index=index, masks=sample.masks, class_ids=sample.class_ids, detections=dets)])
    return evaluator.compute()


@needs_shared
def test_coco_ap_matches_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = DATASETS.get("coco_ov")(split="eval", root=str(COCO_TINY), max_images=6)
    evaluator = OpenVocabEvaluator.from_meta(dataset.dataset_meta, output_dir=str(tmp_path / "out"))
    result = _run_detection_eval(dataset, evaluator)
    assert result["IoU"] == pytest.approx(100.0) and result["Acc"] == pytest.approx(100.0)
    det_file = tmp_path / "out" / "detections.json"
    detections = json.loads(det_file.read_text())
    assert len(detections) == result["num_detections"] == 2 * sum(len(anns) for _, anns in dataset.entries)
    assert {d["category_id"] for d in detections} <= set(dataset.category_ids)
    assert all(isinstance(d["segmentation"]["counts"], str) for d in detections)
    gt = COCO(dataset.ann_file_path)
    coco_eval = COCOeval(gt, gt.loadRes(str(det_file)), "segm")
    coco_eval.params.imgIds = sorted(image["id"] for image, _ in dataset.entries)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    for i, key in enumerate(("AP", "AP50", "AP75")):
        assert result[key] == pytest.approx(coco_eval.stats[i] * 100, abs=1e-9)
    assert 0 < result["AP"] < 100 and result["AP50"] >= result["AP75"]


def test_lvis_ap_matches_lvis_eval(lvis_root, tmp_path):
    from lvis import LVIS, LVISEval, LVISResults

    dataset = DATASETS.get("lvis")(split="eval", root=str(lvis_root))
    evaluator = OpenVocabEvaluator.from_meta(dataset.dataset_meta, output_dir=str(tmp_path / "out"))
    assert evaluator.dataset_kind == "lvis"
    result = _run_detection_eval(dataset, evaluator, seed=1)
    second = evaluator.compute()  # a fresh GT object each time: same numbers
    assert second["AP"] == result["AP"]
    apply_numpy_float_shim()
    gt = LVIS(dataset.ann_file_path)
    lvis_eval = LVISEval(gt, LVISResults(gt, str(tmp_path / "out" / "detections.json")), "segm")
    lvis_eval.run()
    expected = lvis_eval.get_results()
    for key in ("AP", "APr", "APc", "APf"):
        if expected[key] < 0:
            assert result[key] is None
        else:
            assert result[key] == pytest.approx(expected[key] * 100, abs=1e-9)
    assert 0 < result["AP"] < 100 and result["APr"] is not None


def test_the_composition_root_builds_the_open_vocab_evaluator_from_the_dataset(tmp_path):
    """build_evaluator picks the task's evaluator and gives it the dataset's novel flags, category
    ids and GT file (for AP), and the run folder for detections.json."""
    from sambench.cli.build import build_evaluator

    root = write_synthetic_lvis(tmp_path / "lvis", num_images=4, seed=0)
    dataset = DATASETS.get("lvis")(split="eval", root=str(root))
    evaluator = build_evaluator(OPEN_VOCAB_INSTANCE, dataset.dataset_meta, tmp_path / "run")
    assert isinstance(evaluator, OpenVocabEvaluator)
    assert evaluator.dataset_kind == "lvis" and evaluator.output_dir == str(tmp_path / "run")
    assert list(evaluator.novel) == list(dataset.novel) and any(dataset.novel)
    assert evaluator.ann_file == dataset.ann_file_path


def test_lvis_ignores_detections_of_classes_neither_annotated_nor_verified_absent(lvis_root):
    """The premise of SAM 3's ``method.concepts=verified``: on an LVIS image, detections of a class
    that is neither annotated nor in ``neg_category_ids`` change nothing; detections of a class
    verified absent are false positives."""
    from sambench.evaluation.open_vocab import encode_mask, lvis_mask_ap

    dataset = DATASETS.get("lvis")(split="eval", root=str(lvis_root))
    perfect, unverified, negative = [], [], []
    for index in range(len(dataset)):
        sample = dataset[index]

        def result(class_id: int, mask, score: float) -> dict:
            return {"image_id": sample.meta["image_id"], "category_id": dataset.category_ids[class_id], "score": score,
                    "segmentation": encode_mask(mask.numpy())}

        perfect += [result(c, m, 0.5) for m, c in zip(sample.masks, sample.class_ids.tolist())]
        scored = set(sample.class_ids.tolist()) | set(sample.meta["neg_class_ids"])
        unverified += [result(c, sample.masks[0], 0.9) for c in range(len(dataset.class_names)) if c not in scored]
        negative += [result(c, sample.masks[0], 0.9) for c in sample.meta["neg_class_ids"]]
    assert unverified and negative
    image_ids = [image["id"] for image, _ in dataset.entries]
    apply_numpy_float_shim()
    base = lvis_mask_ap(dataset.ann_file_path, perfect, image_ids)["AP"]
    assert base > 50
    assert lvis_mask_ap(dataset.ann_file_path, perfect + unverified, image_ids)["AP"] == base
    assert lvis_mask_ap(dataset.ann_file_path, perfect + negative, image_ids)["AP"] < base
