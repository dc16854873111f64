"""The composition root: the only place that reads the config and builds objects from it.

Modules receive plain keyword arguments (``OmegaConf.to_container``), never a config object.
"""

from __future__ import annotations

import inspect
import logging
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sambench import REPO_ROOT, __version__
from sambench.backbones.interface import SegmentationBackbone, check_capabilities
from sambench.backbones.registry import DEFAULT_FAMILY, backbone_class, backbone_configs, capabilities_of, kind_of
from sambench.cli.config_types import FLAGS, check_flags, check_section, check_trainer
from sambench import dist
from sambench.data.base import DEFAULT_MAX_IMAGE_PIXELS, set_max_image_pixels
from sambench.data.few_shot import FewShotSubset
from sambench.data.meta import DatasetMeta
from sambench.errors import ConfigError, DatasetError
from sambench.files import write_json_atomic, write_text_atomic
from sambench.method import ROOT_KWARG_NAMES
from sambench.peft import PeftSettings, apply_peft
from sambench.registry import DATASETS, METHODS, check_pairing, lookup, task_for
from sambench.tasks import Task

log = logging.getLogger(__name__)


def plain(node) -> dict:
    """A resolved config node as plain Python containers."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def check_config(cfg: DictConfig) -> None:
    """Compose-time checks before anything is built: names exist and fit together, and every
    value has the type (and range) its constructor expects."""
    method, dataset = lookup(METHODS, cfg.method.name), lookup(DATASETS, cfg.dataset.name)
    check_pairing(cfg.method.name, cfg.dataset.name)
    check_flags({key: cfg.get(key) for key in FLAGS if key in cfg})
    check_trainer(plain(cfg.trainer))
    check_section("method", method, plain(cfg.method), ignore=("name", "peft"))
    PeftSettings.from_dict(peft_section(cfg.method.get("peft")))
    check_section("dataset", dataset, plain(cfg.dataset), ignore=("name", "few_shot"))
    check_few_shot(cfg.dataset.name, dataset, plain(cfg.dataset).get("few_shot"))
    backbone = plain(cfg.backbone)
    family = backbone.get("family", DEFAULT_FAMILY)
    check_section("backbone", backbone_class(family), backbone, ignore=("family",))
    check_capabilities(cfg.method.name, method, cfg.backbone.name, capabilities_of(backbone),
                       fitting=fitting_backbones(method), kind=kind_of(backbone))


def fitting_backbones(method) -> list[str]:
    """The backbone configs (``conf/backbone/*.yaml``) of the method's ``BACKBONE_KIND`` whose
    capabilities cover its ``REQUIRES``."""
    required = set(getattr(method, "REQUIRES", ()))
    kind = getattr(method, "BACKBONE_KIND", "promptable")
    return [name for name, config in backbone_configs().items()
            if kind_of(config) == kind and required <= capabilities_of(config)]


FEW_SHOT_KEYS = ("shots", "seed", "file")


def check_few_shot(name: str, dataset, few_shot) -> None:
    """``dataset.few_shot``: null or a mapping of :data:`FEW_SHOT_KEYS`, on a dataset that has
    the protocol's presence index."""
    if few_shot is None:
        return
    if not isinstance(few_shot, dict):
        raise ConfigError(f"dataset.few_shot={few_shot!r}: expected a mapping ({', '.join(FEW_SHOT_KEYS)}) or null")
    for key in few_shot:
        if key not in FEW_SHOT_KEYS:
            raise ConfigError(f"unknown key dataset.few_shot.{key}; valid: {', '.join(FEW_SHOT_KEYS)}")
    check_section("dataset.few_shot", FewShotSubset, few_shot)
    if not hasattr(dataset, "class_presence"):
        raise ConfigError(f"dataset '{name}' has no few-shot protocol (drop dataset.few_shot)")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_backbone(cfg: DictConfig) -> SegmentationBackbone:
    """The backbone of ``cfg.backbone``: its ``family``'s class built with the other keys."""
    kwargs = plain(cfg.backbone)
    cls = backbone_class(kwargs.pop("family", DEFAULT_FAMILY))
    cache_dir = cfg.cache.dir if cfg.cache.enabled else None
    return cls(**kwargs, cache_dir=cache_dir)


def _accepts(cls, name: str) -> bool:
    return name in inspect.signature(cls).parameters


PEFT_PRESETS = REPO_ROOT / "conf" / "method" / "peft"


def peft_section(value) -> dict:
    """``method.peft`` as a mapping: a config node, null (nothing changes) or a preset's name
    (``method.peft=lora`` is ``conf/method/peft/lora.yaml``, as ``method/peft=lora``)."""
    if value is None:
        return {}
    if isinstance(value, str):
        path = PEFT_PRESETS / f"{value}.yaml"
        if not path.is_file():
            presets = ", ".join(sorted(p.stem for p in PEFT_PRESETS.glob("*.yaml")))
            raise ConfigError(f"unknown method.peft preset '{value}'; presets: {presets} (conf/method/peft)")
        preset = OmegaConf.load(path)
        preset.pop("defaults", None)  # every preset extends none.yaml (its defaults list)
        return plain(OmegaConf.merge(OmegaConf.load(PEFT_PRESETS / "none.yaml"), preset))
    return plain(value)


def build_method(cfg: DictConfig, sam: SegmentationBackbone, run_dir: Path | None = None,
                 class_names: list[str] | None = None, peft: dict | None = None):
    """The method with its config keys, plus the keywords its class declares in ``ROOT_KWARGS``:
    ``run_dir`` (to save artefacts such as PerSAM-F's fitted weights), ``class_names`` (the
    dataset's vocabulary from its :class:`~sambench.data.meta.DatasetMeta`, e.g. SSPrompt's
    semantic prompts), ``cache_dir`` (frozen-feature caches) and ``task`` (the one of the
    method's ``TASKS`` that the dataset serves); then ``method.peft`` (or ``peft``, settings
    that win over it: a checkpoint's) is applied."""
    kwargs = plain(cfg.method)
    settings = PeftSettings.from_dict(peft if peft is not None else peft_section(kwargs.pop("peft", None)))
    kwargs.pop("peft", None)
    cls = lookup(METHODS, kwargs.pop("name"))
    task = task_for(cls, lookup(DATASETS, cfg.dataset.name)) if "task" in cls.ROOT_KWARGS else None
    supplied = {"run_dir": run_dir, "class_names": class_names, "cache_dir": cfg.cache.dir if cfg.cache.enabled else None,
                "task": task}
    unknown = sorted(set(cls.ROOT_KWARGS) - set(ROOT_KWARG_NAMES))
    if unknown:
        raise ConfigError(f"method '{cfg.method.name}' asks for {unknown} (ROOT_KWARGS); the root supplies {list(ROOT_KWARG_NAMES)}")
    kwargs.update({key: supplied[key] for key in cls.ROOT_KWARGS})
    method = cls(sam=sam, **kwargs)
    apply_peft(method, settings)
    return method


def build_dataset(cfg: DictConfig, split: str, run_dir: Path | None = None):
    """``split`` is ``train`` or ``eval``; the top-level ``split=<name>`` picks the named
    evaluation split of datasets that have them (RefCOCO: val/testA/testB/test). With
    ``dataset.few_shot`` (shots or file set), the training split is wrapped in a
    :class:`FewShotSubset` (``max_samples`` then applies to the selection) and rank 0 saves the
    selection in ``run_dir``."""
    kwargs = plain(cfg.dataset)
    name = kwargs.pop("name")
    few_shot = kwargs.pop("few_shot", None) if split == "train" else None
    if not few_shot or (few_shot.get("shots") is None and not few_shot.get("file")):
        few_shot = None
    max_samples = kwargs.pop("max_samples", None) if few_shot else None
    cls = lookup(DATASETS, name)
    if split == "eval" and cfg.get("split"):
        if not _accepts(cls, "eval_split"):
            raise ConfigError(f"split={cfg.split}: dataset '{name}' has no named evaluation splits (drop split=)")
        kwargs["eval_split"] = cfg.split
    set_max_image_pixels(cfg.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
    kwargs.pop("few_shot", None)  # evaluation: the whole split
    dataset = cls(split=split, **kwargs)
    if few_shot:
        dataset = FewShotSubset(dataset, **few_shot, max_samples=max_samples)
        if run_dir is not None and dist.is_main():
            dataset.write(run_dir)
    elif split == "eval" and hasattr(dataset, "write_episodes") and run_dir is not None and dist.is_main():
        dataset.write_episodes(run_dir)  # one-shot benchmarks: the episode list, reusable as dataset.episodes_file
    if len(dataset) == 0:  # a safety net: adapters say which file and why where they can
        where = getattr(dataset, "ann_path", None) or getattr(dataset, "root", None) or kwargs.get("root")
        purpose = "train on" if split == "train" else "evaluate"
        raise DatasetError(f"dataset '{name}' has no {split} samples (read from {where}); nothing to {purpose}")
    return dataset


def build_evaluator(task: Task, meta: DatasetMeta, run_dir: Path | None = None):
    """The task's evaluator, built from the evaluation dataset's metadata (vocabulary; for
    open-vocabulary AP also novel flags, category ids, the GT file and its format); evaluators
    that write result files (``detections.json``) get the run folder."""
    return task.build_evaluator(meta, output_dir=str(run_dir) if run_dir else None)


def write_run_files(cfg: DictConfig, run_dir: Path) -> None:
    """Rank 0: the resolved ``config.yaml`` and ``env.json`` (versions, git sha, hardware)."""
    if not dist.is_main():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_json_atomic(run_dir / "env.json", environment())


def environment() -> dict:
    try:
        sha = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return {
        "sambench": __version__, "git_sha": sha or None, "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "world_size": dist.world_size(),
    }
