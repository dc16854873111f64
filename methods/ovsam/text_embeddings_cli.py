"""``tools/prepare_text_embeddings.py``: compute and cache the class text embeddings (14 ViLD
templates × synonyms) of a method's CLIP for every vocabulary of a dataset (training and
evaluation splits), so a multi-GPU run starts with them on disk. Methods generate missing ones
themselves; this only does it ahead of time (e.g. on a login node). A dataset's
``class_names_file`` (per-class synonym lists) is used, and is part of the cache key, as in the methods."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sambench.backbones.clip import ClipBackbone
from sambench.cli.build import build_dataset, check_config, plain, write_json_atomic
from sambench.errors import ConfigError, DatasetError
from sambench.logging.console import setup_console_logging
from .vocabulary import TextEmbeddingBank

log = logging.getLogger("sambench")


def prepare_text_embeddings(cfg: DictConfig) -> dict:
    """Embeddings of the train and eval vocabularies -> ``cache.dir``; a summary in the run folder."""
    setup_console_logging(rank=0)
    check_config(cfg)
    if "clip" not in cfg.method:
        raise ConfigError(f"method '{cfg.method.name}' has no CLIP text encoder (method.clip): nothing to prepare")
    if not cfg.cache.enabled:
        raise ConfigError("cache.enabled=false: the embeddings would not be stored anywhere")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    vocabularies = {}
    for split in ("train", "eval"):
        try:
            dataset = build_dataset(cfg, split, run_dir)
            vocabularies[split] = (list(dataset.class_names), getattr(dataset, "synonym_lists", None))
        except DatasetError as exc:  # e.g. only the validation annotations are on disk
            log.warning("%s split skipped: %s", split, exc)
    if not vocabularies:
        raise DatasetError(f"dataset '{cfg.dataset.name}': neither split could be read (see the warnings above)")
    bank = TextEmbeddingBank(ClipBackbone(**plain(cfg.method.clip)), cfg.cache.dir)
    summary = {}
    for split, (names, synonym_lists) in vocabularies.items():
        embeddings = bank(names, synonym_lists)
        file = bank.cache_file(names, synonym_lists)
        summary[split] = {"classes": len(names), "shape": list(embeddings.shape), "file": str(file)}
        log.info("%s: %d classes -> %s %s", split, len(names), tuple(embeddings.shape), file)
    write_json_atomic(run_dir / "text_embeddings.json", summary)
    return summary
