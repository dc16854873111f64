"""Task objects: pairing, evaluators built from a task and a dataset's metadata, the constructor
keywords the composition root supplies, and each prediction writer's files read back with
numpy / PIL / json."""

from __future__ import annotations

import inspect
import json
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from sambench import tasks
from sambench.cli.build import build_evaluator, build_method
from sambench.testing.lvis_synthetic import write_synthetic_lvis
from sambench.data.meta import DatasetMeta
from sambench.engine.evaluate import evaluate
from sambench.errors import ConfigError
from sambench.evaluation import prediction_files as files
from sambench.evaluation.distillation import EmbeddingDistillationEvaluator
from sambench.evaluation.instance_iou import InstanceIoUEvaluator
from sambench.evaluation.open_vocab import OpenVocabEvaluator
from sambench.evaluation.personalization import PersonalizationEvaluator
from sambench.evaluation.referring import ReferringEvaluator
from sambench.evaluation.semantic import SemanticEvaluator
from sambench.method import ROOT_KWARG_NAMES, SambenchMethod
from sambench.registry import DATASETS, METHODS, check_pairing, load_plugins, method_tasks, task_for
from sambench.structures import Batch, Prediction, Sample

load_plugins()


# --------------------------------------------------------------------------- tasks and pairing


def test_seven_tasks_with_distinct_names_and_every_plugin_declares_task_objects():
    assert [task.name for task in tasks.ALL] == [
        "prompted_instance", "personalize", "referring", "semantic_few_shot", "open_vocab_instance", "image_distillation",
        "video_object",
    ]
    for name, cls in METHODS.module_dict.items():
        assert method_tasks(cls) and all(task in tasks.ALL for task in method_tasks(cls)), name
    assert method_tasks(METHODS.get("sam3")) == (tasks.OPEN_VOCAB_INSTANCE, tasks.REFERRING, tasks.PERSONALIZE,
                                                 tasks.SEMANTIC_FEW_SHOT, tasks.VIDEO_OBJECT)
    for name, cls in DATASETS.module_dict.items():
        assert cls.TASKS and all(task in tasks.ALL for task in cls.TASKS), name
    with pytest.raises(FrozenInstanceError):
        tasks.REFERRING.name = "other"  # type: ignore[misc]


def test_pairing_error_names_the_task_and_the_datasets_that_fit():
    check_pairing("sam2clip", "image_folder")
    with pytest.raises(ConfigError, match=r"method 'sam2clip' \(task 'image_distillation'\) cannot run on dataset "
                                          r"'perseg'; datasets that fit: image_folder$"):
        check_pairing("sam2clip", "perseg")
    with pytest.raises(ConfigError, match="datasets that fit: coco, coco_ov, lvis$"):
        check_pairing("ovsam", "sample")


def test_a_method_with_several_tasks_takes_the_one_the_dataset_serves():
    sam3 = METHODS.get("sam3")
    assert task_for(sam3, DATASETS.get("refcoco")) == tasks.REFERRING
    assert task_for(sam3, DATASETS.get("perseg")) == tasks.PERSONALIZE
    assert task_for(sam3, DATASETS.get("cityscapes")) == tasks.SEMANTIC_FEW_SHOT
    assert task_for(sam3, DATASETS.get("lvis")) == tasks.OPEN_VOCAB_INSTANCE
    assert task_for(sam3, DATASETS.get("davis2017")) == tasks.VIDEO_OBJECT
    assert task_for(sam3, DATASETS.get("sample")) is None
    assert task_for(METHODS.get("persam"), DATASETS.get("perseg")) == tasks.PERSONALIZE  # one TASK: itself
    with pytest.raises(ConfigError, match=r"method 'sam3' \(tasks 'open_vocab_instance, referring, personalize, "
                                          r"semantic_few_shot, video_object'\) cannot run on dataset 'sample'; datasets that fit: "
                                          r"acdc, ade20k, .*perseg, refcoco, refcocog, refcocop$"):
        check_pairing("sam3", "sample")


def test_missing_fields_lists_what_a_sample_lacks():
    image = np.zeros((4, 4, 3), np.uint8)
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert tasks.REFERRING.missing_fields(Sample(index=0, image=image)) == ["masks", "texts"]
    assert tasks.REFERRING.missing_fields(Sample(index=0, image=image, masks=masks, texts=["the cat"])) == []
    assert tasks.SEMANTIC_FEW_SHOT.missing_fields(Sample(index=0, image=image)) == ["semantic", "class_names"]
    assert tasks.IMAGE_DISTILLATION.missing_fields(Sample(index=0, image=image)) == []


# --------------------------------------------------------------------------- evaluators from task + meta


@pytest.mark.parametrize("task, expected", [
    (tasks.PROMPTED_INSTANCE, InstanceIoUEvaluator), (tasks.PERSONALIZE, PersonalizationEvaluator),
    (tasks.REFERRING, ReferringEvaluator), (tasks.SEMANTIC_FEW_SHOT, SemanticEvaluator),
    (tasks.OPEN_VOCAB_INSTANCE, OpenVocabEvaluator), (tasks.IMAGE_DISTILLATION, EmbeddingDistillationEvaluator),
])
def test_each_task_builds_its_evaluator_from_the_meta(task, expected):
    evaluator = build_evaluator(task, DatasetMeta(class_names=("road", "car")))
    assert type(evaluator) is expected
    if hasattr(evaluator, "class_names"):
        assert list(evaluator.class_names) == ["road", "car"]


def test_semantic_evaluator_refuses_a_meta_without_classes():
    with pytest.raises(ValueError, match="class names"):
        build_evaluator(tasks.SEMANTIC_FEW_SHOT, DatasetMeta())
    assert build_evaluator(tasks.PROMPTED_INSTANCE, DatasetMeta()).class_names is None  # no vocabulary -> None


def test_open_vocab_evaluator_takes_the_meta_explicitly(tmp_path):
    meta = DatasetMeta(class_names=("cat", "dog"), novel=(False, True), annotation_format="lvis",
                       category_ids=(3, 7), ann_file="/gt.json")
    evaluator = build_evaluator(tasks.OPEN_VOCAB_INSTANCE, meta, tmp_path / "run")
    assert evaluator.dataset_kind == "lvis" and evaluator.output_dir == str(tmp_path / "run")
    assert list(evaluator.novel) == [False, True] and evaluator.category_ids == [3, 7]
    assert evaluator.ann_file == "/gt.json" and evaluator.class_names == ["cat", "dog"]
    plain = build_evaluator(tasks.OPEN_VOCAB_INSTANCE, DatasetMeta(class_names=("cat",)))
    assert plain.dataset_kind == "coco" and plain.novel is None and plain.category_ids is None and plain.output_dir is None


def test_lvis_or_coco_ap_follows_the_annotation_format_not_the_dataset_name(tmp_path):
    root = write_synthetic_lvis(tmp_path / "lvis", num_images=2, seed=0)
    lvis = DATASETS.get("lvis")

    class RenamedLvis(lvis):
        NAME = "coco"  # a name alone no longer decides the AP API

    class LvisAsCoco(lvis):
        ANNOTATION_FORMAT = "coco"

    for cls, expected in ((lvis, "lvis"), (RenamedLvis, "lvis"), (LvisAsCoco, "coco")):
        dataset = cls(split="eval", root=str(root))
        meta = dataset.dataset_meta
        assert meta.annotation_format == expected
        assert meta.class_names == tuple(dataset.class_names) and meta.novel == tuple(dataset.novel)
        assert meta.category_ids == tuple(dataset.category_ids) and meta.ann_file == dataset.ann_file_path
        assert build_evaluator(tasks.OPEN_VOCAB_INSTANCE, meta).dataset_kind == expected


def test_dataset_meta_checks_its_fields():
    with pytest.raises(ValueError, match="annotation_format"):
        DatasetMeta(annotation_format="voc")
    with pytest.raises(ValueError, match="1 novel flags for 2 classes"):
        DatasetMeta(class_names=("a", "b"), novel=(True,))
    with pytest.raises(ValueError, match="3 category ids for 2 classes"):
        DatasetMeta(class_names=("a", "b"), category_ids=(1, 2, 3))


# --------------------------------------------------------------------------- constructor keywords from the root


def test_declared_root_kwargs_are_exactly_the_constructor_keywords_the_root_can_supply():
    for name, cls in METHODS.module_dict.items():
        accepted = {key for key in ROOT_KWARG_NAMES if key in inspect.signature(cls).parameters}
        assert set(cls.ROOT_KWARGS) == accepted, name


def test_build_method_passes_only_the_declared_keywords(tmp_path):
    received = {}

    class Needs(SambenchMethod):
        TASK = tasks.PROMPTED_INSTANCE
        ROOT_KWARGS = ("class_names", "run_dir")

        def __init__(self, *, sam, scale: int, class_names=None, run_dir=None, cache_dir="unset"):
            super().__init__()
            received.update(sam=sam, scale=scale, class_names=class_names, run_dir=run_dir, cache_dir=cache_dir)

    class AsksTooMuch(SambenchMethod):
        TASK = tasks.PROMPTED_INSTANCE
        ROOT_KWARGS = ("device",)

    cfg = OmegaConf.create({"method": {"name": "_test_needs", "scale": 2}, "cache": {"enabled": True, "dir": str(tmp_path)}})
    METHODS.register_module(name="_test_needs", module=Needs)
    METHODS.register_module(name="_test_asks", module=AsksTooMuch)
    try:
        build_method(cfg, "SAM", tmp_path / "run", ["road"])
        assert received == {"sam": "SAM", "scale": 2, "class_names": ["road"], "run_dir": tmp_path / "run",
                            "cache_dir": "unset"}
        cfg.method = {"name": "_test_asks"}
        with pytest.raises(ConfigError, match=r"asks for \['device'\]"):
            build_method(cfg, "SAM")
    finally:
        METHODS.module_dict.pop("_test_needs")
        METHODS.module_dict.pop("_test_asks")


# --------------------------------------------------------------------------- prediction writers


def _sample(prediction_path: str | None = None, size=(6, 8), **meta) -> Sample:
    if prediction_path is not None:
        meta["prediction_path"] = prediction_path
    return Sample(index=3, image=np.full((*size, 3), 40, np.uint8), meta=meta)


def _png(path) -> tuple[str, np.ndarray]:
    with Image.open(path) as img:
        return img.mode, np.array(img)


def test_prediction_paths_are_sanitised_and_stay_inside_the_folder():
    assert files.prediction_path(_sample("cat/01")).as_posix() == "cat/01"
    assert files.prediction_path(_sample("../up/a b")).as_posix() == "_/up/a_b"
    assert files.prediction_path(_sample(file_name="dir/img.jpg")).as_posix() == "img"
    assert files.prediction_path(_sample()).as_posix() == "000003"


def test_instance_id_png_numbers_masks_from_one(tmp_path):
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, :2], masks[1, 4:, 5:] = True, True
    files.INSTANCE_IDS(_sample("cat/01"), Prediction(index=3, masks=masks), tmp_path)
    mode, ids = _png(tmp_path / "cat" / "01.png")
    expected = np.zeros((6, 8), np.uint8)
    expected[:2], expected[4:, 5:] = 1, 2
    assert mode == "L" and np.array_equal(ids, expected)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["01.png"]


def test_instance_id_png_is_16_bit_beyond_255_masks(tmp_path):
    masks = torch.zeros(300, 20, 20, dtype=torch.bool)
    for i in range(300):
        masks[i].view(-1)[i] = True
    files.write_instance_ids(_sample("many"), Prediction(index=0, masks=masks), tmp_path)
    mode, ids = _png(tmp_path / "many.png")
    expected = np.zeros(400, np.int64)
    expected[:300] = np.arange(1, 301)
    assert mode.startswith("I") and np.array_equal(ids.astype(np.int64).reshape(-1), expected)


def test_semantic_png_holds_the_class_indices(tmp_path):
    labels = torch.arange(48).reshape(6, 8) % 5
    files.SEMANTIC_LABELS(_sample("aachen/x"), Prediction(index=0, semantic=labels), tmp_path)
    mode, read = _png(tmp_path / "aachen" / "x.png")
    assert mode == "L" and np.array_equal(read, labels.numpy().astype(np.uint8))


def test_referring_writer_adds_the_logits_as_float32_npy(tmp_path):
    logits = torch.randn(5, 5).to(torch.bfloat16)
    mask = torch.zeros(1, 6, 8, dtype=torch.bool)
    mask[0, 1:3] = True
    tasks.REFERRING.writer(_sample("17"), Prediction(index=0, masks=mask, logits=logits), tmp_path)
    stored = np.load(tmp_path / "17.npy")
    assert stored.dtype == np.float32 and np.array_equal(stored, logits.float().numpy())
    assert np.array_equal(_png(tmp_path / "17.png")[1], mask[0].numpy().astype(np.uint8))
    tasks.REFERRING.writer(_sample("18"), Prediction(index=0, masks=mask), tmp_path)  # no logits: PNG only
    assert (tmp_path / "18.png").is_file() and not (tmp_path / "18.npy").exists()


def test_open_vocab_writer_adds_per_instance_pngs_and_merged_labels(tmp_path):
    masks = torch.zeros(2, 6, 8, dtype=torch.bool)
    masks[0, :3], masks[1, 3:] = True, True
    labels = [{"class_id": 4, "class_name": "cat", "score": 0.5}, {"class_id": 0, "class_name": "dog", "score": 0.25}]
    first = Prediction(index=0, masks=masks, instance_names=["9_2", "9/1"], instance_labels=labels)
    second = Prediction(index=1, masks=masks[:1], instance_names=["1_5"], instance_labels=labels[1:])
    tasks.OPEN_VOCAB_INSTANCE.writer(_sample("img9"), first, tmp_path)
    tasks.OPEN_VOCAB_INSTANCE.writer(_sample("img1"), second, tmp_path)
    for name, mask in (("9_2", masks[0]), ("9_1", masks[1]), ("1_5", masks[0])):
        mode, read = _png(tmp_path / f"{name}.png")
        assert mode == "L" and np.array_equal(read, mask.numpy().astype(np.uint8) * 255)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["1_5.json", "9_2.json"]
    files.merge_label_files(tmp_path)
    assert not (tmp_path / "labels").exists()
    merged = json.loads((tmp_path / "labels.json").read_text())
    assert list(merged) == ["1_5", "9_1", "9_2"]
    assert merged == {"9_2": labels[0], "9_1": labels[1], "1_5": labels[1]}
    plain = Prediction(index=2, masks=masks)  # no instance names: the id PNG only
    tasks.OPEN_VOCAB_INSTANCE.writer(_sample("img2"), plain, tmp_path / "plain")
    assert [p.name for p in (tmp_path / "plain").iterdir()] == ["img2.png"]


def test_each_task_names_its_writer():
    assert tasks.PROMPTED_INSTANCE.writer.parts == tasks.PERSONALIZE.writer.parts == (files.write_instance_ids,)
    assert tasks.REFERRING.writer.parts == (files.write_instance_ids, files.write_logits)
    assert tasks.SEMANTIC_FEW_SHOT.writer.parts == (files.write_semantic_labels,)
    assert tasks.OPEN_VOCAB_INSTANCE.writer.parts == (files.write_instance_ids, files.write_instance_masks)
    assert tasks.IMAGE_DISTILLATION.writer.parts == ()


class _FixedMethod(SambenchMethod):
    TASK = tasks.REFERRING

    def __init__(self, predictions):
        super().__init__()
        self.predictions = predictions

    def predict(self, batch):
        return [self.predictions[sample.index] for sample in batch]


class _NullEvaluator:
    def reset(self):
        self.seen = 0

    def process(self, batch, predictions):
        self.seen += len(predictions)

    def compute(self):
        return {"num_samples": self.seen}


def test_the_evaluation_loop_writes_with_the_writer_it_is_given(tmp_path):
    mask = torch.ones(1, 6, 8, dtype=torch.bool)
    predictions = {0: Prediction(index=0, masks=mask, logits=torch.zeros(2, 2)), 1: Prediction(index=1, embedding_mse=1.0)}
    samples = [Sample(index=i, image=np.zeros((6, 8, 3), np.uint8), meta={"prediction_path": f"s{i}"}) for i in (0, 1)]
    method = _FixedMethod(predictions)
    metrics, _ = evaluate(method, [Batch(samples)], _NullEvaluator(), device=torch.device("cpu"),
                          writer=tasks.REFERRING.writer, predictions_dir=tmp_path / "pred", overlays_dir=tmp_path / "vis")
    assert metrics == {"num_samples": 2}
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["s0.npy", "s0.png"]  # s1 has no mask
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["s0.png"]
    with pytest.raises(ValueError, match="prediction writer"):
        evaluate(method, [Batch(samples)], _NullEvaluator(), device=torch.device("cpu"), predictions_dir=tmp_path / "x")
