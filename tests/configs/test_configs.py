"""Every shipped config composes, and every method x dataset x backbone it names can be built."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
from sambench.testing import REPO, SHARED_DATA
import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

import sambench.cli.launch  # noqa: F401  (registers the run-folder stamp resolver)
from sambench import CONFIG_DIR, tasks
from sambench.cli.build import build_backbone, build_dataset, build_evaluator, build_method, check_config
from sambench.cli.launch import GROUPS, check_group_choices
from sambench.testing import semantic_synthetic
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.testing.davis_synthetic import write_davis
from sambench.testing.lvis_synthetic import write_synthetic_lvis
from sambench.testing.oneshot_synthetic import write_synthetic_coco20i, write_synthetic_fss1000, write_synthetic_lvis92i
from sambench.testing.refcoco_synthetic import write_synthetic_refcoco
from sambench.errors import ConfigError
from sambench.method import SambenchMethod
from sambench.registry import DATASETS, METHODS, check_pairing, load_plugins, lookup, method_tasks, task_for
from sambench.structures import collate

load_plugins()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def composed(*overrides: str, config: str = "train"):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config, overrides=list(overrides))


SEMANTIC = {name: getattr(semantic_synthetic, f"write_synthetic_{name}") for name in
            ("cityscapes", "ade20k", "acdc", "bdd100k", "mapillary", "pascal_context")}
REFER = {"refcoco": ("refcoco", "unc"), "refcocop": ("refcoco+", "unc"), "refcocog": ("refcocog", "umd")}


def data_overrides(dataset: str, tmp_path: Path) -> list[str]:
    """Point datasets that need files at the shared samples (skip when they are absent) or at
    generated copies in the real layout."""
    if dataset == "image_folder":
        folder = tmp_path / "images"
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((32, 48, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
        return [f"dataset.root={folder}", "dataset.eval_images=1"]
    if dataset in SEMANTIC:
        return [f"dataset.root={SEMANTIC[dataset](tmp_path / dataset)}", "dataset.few_shot.shots=1"]
    if dataset in REFER:
        folder, split_by = REFER[dataset]
        write_synthetic_refcoco(tmp_path / "refer", num_images=8, dataset=folder, split_by=split_by)
        return [f"dataset.root={tmp_path / 'refer'}"]
    if dataset in ("coco_ov", "coco"):
        return [f"dataset.root={write_synthetic_coco(tmp_path / 'coco', num_images=3)}"]
    if dataset == "lvis":
        return [f"dataset.root={write_synthetic_lvis(tmp_path / 'lvis')}"]
    if dataset == "davis2017":
        return [f"dataset.root={write_davis(tmp_path / 'DAVIS', {'seq': (3, 32, 40, 2)})}", "dataset.train_split=val"]
    if dataset == "coco20i":
        return [f"dataset.root={write_synthetic_coco20i(tmp_path / 'COCO2014')}", "dataset.episodes=2"]
    if dataset == "fss1000":
        return [f"dataset.root={write_synthetic_fss1000(tmp_path / 'FSS-1000')}", "dataset.max_samples=2"]
    if dataset == "lvis92i":
        return [f"dataset.root={write_synthetic_lvis92i(tmp_path / 'LVIS')}", "dataset.episodes=2"]
    if dataset == "coco_instances":
        if not SHARED_DATA.is_dir():
            pytest.skip("needs ../shared/data beside the checkout")
        return [f"dataset.root={SHARED_DATA / 'coco_tiny'}", "dataset.max_images=2"]
    return []


PROMPT_LEARNING = ("ssprompt", "spaprompt", "semprompt", "zero_shot_prompts", "coop")


def method_overrides(method: str) -> list[str]:
    """Keep test-time work short: PerSAM-F fits 1000 steps by default, the prompt-learning
    methods decode 100 grid prompts per image (4 here), OV-SAM's adapter has 5 blocks (1 here)."""
    if method == "persam_f":
        return ["method.iterations=5"]
    if method == "sam3":  # the full model needs sam3.pt: its random small twin
        return ["backbone=sam3_tiny"]
    if method == "sam2clip":
        return ["method.depth=1", "method.num_heads=2"]
    if method in ("clip2sam", "ovsam"):
        return ["method.adapter.depth=1", "method.adapter.num_heads=2"]
    return ["method.grid=2"] if method in PROMPT_LEARNING else []


def random_text_encoder(cfg) -> list[str]:
    """Experiments name local BERT / CLIP weights: build random models instead (no files here)."""
    if "text_encoder" in cfg.method:
        return ["method.text_encoder.path=null", "method.text_encoder.allow_random_init=true"]
    if "clip" in cfg.method:  # OV-SAM experiments also name stage weights: a random adapter instead
        untrained = ["method.allow_untrained=true"] if "allow_untrained" in cfg.method else []
        return ["method.clip.checkpoint=null", "method.clip.allow_random_init=true", *untrained]
    return []


@pytest.mark.parametrize("config", ["train", "eval"])
@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes(config, group):
    for option in options(group):
        cfg = composed(f"{group}={option}", config=config)
        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        assert cfg.job == config


def test_defaults_are_the_embedded_default():
    cfg = composed()
    assert (cfg.method.name, cfg.dataset.name, cfg.backbone.name) == ("sam_prompted", "sample", "sam_tiny")
    assert cfg.trainer.max_steps == 30  # dataset=sample picks trainer=sample
    assert composed("trainer=default").trainer.max_steps is None


def fits(method: str, dataset: str) -> bool:
    """Config option names equal registry names (checked by test_config_names_are_registry_names)."""
    return task_for(lookup(METHODS, method), lookup(DATASETS, dataset)) is not None


PAIRS = [(m, d) for m in options("method") for d in options("dataset")]
VALID = [pair for pair in PAIRS if fits(*pair)]


def test_config_names_are_registry_names():
    for group, registry in (("method", METHODS), ("dataset", DATASETS)):
        for option in options(group):
            assert composed(f"{group}={option}")[group].name == option
            lookup(registry, option)


@pytest.mark.parametrize("method, dataset", [p for p in PAIRS if p not in VALID])
def test_invalid_pairings_are_refused(method, dataset):
    with pytest.raises(ConfigError, match=f"cannot run on dataset '{dataset}'"):
        check_pairing(method, dataset)


@pytest.mark.parametrize("method, dataset", VALID)
def test_every_valid_method_dataset_pair_instantiates(method, dataset, tmp_path):
    cfg = composed(f"method={method}", f"dataset={dataset}", f"cache.dir={tmp_path}", *data_overrides(dataset, tmp_path),
                   *method_overrides(method))
    check_config(cfg)
    for split in ("train", "eval"):
        data = build_dataset(cfg, split, tmp_path / "run")
        assert len(data) > 0
        batch = [data[0]]
    task = task_for(lookup(METHODS, method), lookup(DATASETS, dataset))
    assert task.missing_fields(batch[0]) == []  # the dataset delivers what the task needs
    model = build_method(cfg, build_backbone(cfg), class_names=list(data.dataset_meta.class_names) or None)
    assert isinstance(model, SambenchMethod) and model.TASK == task
    evaluator = build_evaluator(model.TASK, data.dataset_meta)
    predictions = model.predict(collate(batch))
    evaluator.process(collate(batch), predictions)
    metrics = evaluator.compute()
    if "num_pixels" in metrics:  # semantic: pixel counts
        assert metrics["num_pixels"] > 0
    else:
        assert metrics.get("num_images", metrics.get("num_samples", metrics.get("num_sequences"))) == 1


@pytest.mark.slow  # official-size models (ViT-H, RN50x16) built with random weights
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_builds_its_method(experiment, tmp_path):
    """Experiments name official backbones: build them with random weights (no files here)."""
    overrides = [f"experiment={experiment}", f"cache.dir={tmp_path}", "backbone.checkpoint=null", "backbone.allow_random_init=true"]
    cfg = composed(*overrides)
    cfg = composed(*overrides, *random_text_encoder(cfg))
    check_config(cfg)
    model = build_method(cfg, build_backbone(cfg), class_names=["road", "car"])
    assert model.TASK in method_tasks(lookup(METHODS, cfg.method.name))


@pytest.mark.parametrize("backbone, width", [("sam_vit_b", 768), ("sam_vit_l", 1024), ("sam_vit_h", 1280)])
def test_official_backbones_build_with_their_sizes(backbone, width, tmp_path):
    cfg = composed(f"backbone={backbone}", "backbone.checkpoint=null", "backbone.allow_random_init=true",
                   "cache.enabled=false")
    sam = build_backbone(cfg)
    assert sam._raw_sam().image_encoder.pos_embed.shape == (1, 64, 64, width)


def test_unknown_group_option_lists_choices_and_closest():
    with pytest.raises(ConfigError, match=r"unknown backbone 'sam_vit_bb' \(did you mean 'sam_vit_b'\?\); valid: .*\bsam_tiny, sam_vit_b\b"):
        check_group_choices(["backbone=sam_vit_bb"])
    check_group_choices(["backbone=sam_vit_b", "trainer.optim.lr=1", "+x=1", "experiment=null"])


def test_unknown_registry_name():
    with pytest.raises(ConfigError, match=r"unknown method 'sam_promted' \(did you mean 'sam_prompted'\?\)"):
        lookup(METHODS, "sam_promted")


def test_impossible_pairing_names_the_datasets_that_fit():
    class NoDataYet(SambenchMethod):
        TASK = replace(tasks.PROMPTED_INSTANCE, name="_no_dataset_serves_this")

    METHODS.register_module(name="_test_task", module=NoDataYet)
    try:
        with pytest.raises(ConfigError, match="cannot run on dataset 'sample'; datasets that fit: none"):
            check_pairing("_test_task", "sample")
    finally:
        METHODS.module_dict.pop("_test_task")
    with pytest.raises(ConfigError, match="cannot run on dataset 'perseg'; datasets that fit: refcoco, refcocog, refcocop"):
        check_pairing("dit_layerwise", "perseg")


def test_plugins_do_not_shadow_hugging_face_datasets():
    """methods/ and datasets/ load under a private package; `import datasets` is untouched."""
    spec = importlib.util.find_spec("datasets")
    assert spec is None or REPO not in Path(spec.origin or "").resolve().parents
    assert "sambench_plugins.datasets.sample" in __import__("sys").modules
