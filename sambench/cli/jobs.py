"""The two jobs: ``train`` (tools/train.py) and ``evaluate`` (tools/eval.py)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sambench.cli.build import (
    build_backbone, build_dataset, build_evaluator, build_method, check_config, peft_section, plain,
    seed_everything, write_json_atomic, write_run_files,
)
from sambench.cli.build_training import build_trainer
from sambench.data.loader import eval_loader
from sambench import cluster, dist
from sambench.checkpoint import load_checkpoint, load_trainable, resolve_checkpoint
from sambench.engine.cost import model_cost
from sambench.engine.evaluate import evaluate
from sambench.engine.precision import check_precision, set_strict_fp32
from sambench.engine.preemption import Preempted
from sambench.evaluation.prediction_files import merge_label_files
from sambench.logging import build_run_logger
from sambench.peft import PeftSettings, adapter_layers, merge_adapters
from sambench.peft.apply import settings_for_checkpoint
from sambench.logging.console import setup_console_logging

log = logging.getLogger("sambench")
PARTIAL_PREDICTIONS = "predictions.incomplete"  # where predictions go until the evaluation succeeds


def _start(cfg: DictConfig, job: str):
    """Shared set-up: run folder, logging, checks, seed, run logger."""
    check_config(cfg)
    check_precision(cfg.trainer.precision)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    setup_console_logging(rank=dist.rank(), log_file=run_dir / f"{job}.log" if dist.is_main() else None)
    device = dist.training_device(cfg.trainer.device)  # the process group was set up by cli/launch.py
    write_run_files(cfg, run_dir)
    log.info("run folder: %s (%d rank%s, %s)", run_dir, dist.world_size(), "s" * (dist.world_size() > 1), device)
    placement = cluster.submitit_placement()
    if placement is not None:
        log.info("submitit %s job %s: %d task%s, ranks from its job environment (master %s:%d)", placement.executor,
                 placement.job_id, placement.world_size, "s" * (placement.world_size > 1), placement.master_addr,
                 placement.master_port)
    seed_everything(cfg.trainer.seed)
    set_strict_fp32(cfg.trainer.precision)
    run_logger = build_run_logger(
        run_dir=run_dir, rank=dist.rank(), config=plain(cfg), method=cfg.method.name,
        dataset=cfg.dataset.name, backbone=cfg.backbone.name, job_type=job, **plain(cfg.logger),
    )
    return run_dir, device, run_logger


def _method(cfg: DictConfig, run_dir: Path, device, dataset, peft: dict | None = None):
    """The method, built after the datasets so it can receive their class names."""
    class_names = list(dataset.dataset_meta.class_names) or None
    return build_method(cfg, build_backbone(cfg), run_dir, class_names, peft=peft).to(device)


def train(cfg: DictConfig) -> dict:
    run_dir, device, run_logger = _start(cfg, "train")
    train_set, eval_set = build_dataset(cfg, "train", run_dir), build_dataset(cfg, "eval", run_dir)
    method = _method(cfg, run_dir, device, eval_set)
    log.info("%s: %d train / %d eval samples; %d trainable parameters", cfg.dataset.name, len(train_set),
             len(eval_set), sum(p.numel() for p in method.trainable_parameters().values()))
    settings = plain(cfg.trainer)
    settings.pop("device")
    settings.pop("collective_timeout", None)
    trainer = build_trainer(method=method, train_set=train_set, eval_set=eval_set,
                            evaluator=build_evaluator(method.TASK, eval_set.dataset_meta, run_dir), run_dir=run_dir,
                            device=device, run_logger=run_logger, **settings)
    try:
        metrics = trainer.fit()
    except Preempted as stop:
        log.warning("%s; the run resumes from %s when started again in this run folder (hydra.run.dir=%s)",
                    stop, run_dir / "checkpoints" / "last.pt", run_dir)
        run_logger.finish()
        raise
    _finish(run_dir, metrics, run_logger, trainer.cost())
    return metrics


def evaluate_job(cfg: DictConfig) -> dict:
    run_dir, device, run_logger = _start(cfg, "eval")
    eval_set = build_dataset(cfg, "eval", run_dir)
    path = resolve_checkpoint(cfg.ckpt, run_dir)
    state = load_checkpoint(path) if path is not None else None
    settings = PeftSettings.from_dict(peft_section(cfg.method.get("peft")))
    if state is not None:  # the checkpoint's adapters are rebuilt from what it recorded
        settings = settings_for_checkpoint(settings, state.get("meta", {}).get("peft"), path)
    method = _method(cfg, run_dir, device, eval_set, peft=asdict(settings))
    if state is not None:
        ema = state.get("ema")
        weights = ema["shadow"] if (cfg.use_ema and ema) else state["trainable"]
        load_trainable(method.trainable_parameters(), weights, path)
        log.info("loaded %s (step %s%s)", path, state.get("step"), ", EMA weights" if cfg.use_ema and ema else "")
    if settings.merge and adapter_layers(method):
        log.info("method.peft.merge: %d adapted layers folded into their weights", merge_adapters(method))
    loader = eval_loader(eval_set, batch_size=cfg.trainer.eval.batch_size, num_workers=cfg.trainer.num_workers)
    partial = run_dir / PARTIAL_PREDICTIONS
    if cfg.save_predictions:
        if dist.is_main():
            shutil.rmtree(partial, ignore_errors=True)  # left by an evaluation that failed
        dist.barrier("the start of the evaluation")
    metrics, overlays = evaluate(
        method, loader, build_evaluator(method.TASK, eval_set.dataset_meta, run_dir), device=device,
        precision=cfg.trainer.precision, writer=method.TASK.writer, predictions_dir=partial if cfg.save_predictions else None,
        overlays_dir=run_dir / "vis" if cfg.save_overlays else None,
        num_overlays=getattr(run_logger, "num_overlays", 0),
    )
    if cfg.save_predictions and dist.is_main():  # every rank has written its files: the gather in compute() waited
        publish_predictions(partial, run_dir / "predictions")
    run_logger.log_metrics({k: v for k, v in metrics.items() if not isinstance(v, dict)}, 0, prefix="eval/")
    if overlays:
        run_logger.log_overlays(overlays, 0, key="eval/overlays")
    _finish(run_dir, metrics, run_logger, model_cost(method, device))
    return metrics


def publish_predictions(partial: Path, final: Path) -> None:
    """Rank 0 after a successful evaluation: merge label fragments, then move the folder into
    place (an earlier ``predictions/`` of this run folder is replaced). A failed evaluation
    leaves only ``predictions.incomplete/``."""
    partial.mkdir(parents=True, exist_ok=True)  # an evaluation without any mask still publishes
    merge_label_files(partial)
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def _finish(run_dir: Path, metrics: dict, run_logger, cost: dict) -> None:
    """metrics.json and cost.json (the run's cost, :data:`~sambench.engine.cost.COST_KEYS`) on rank 0."""
    if dist.is_main():
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_json_atomic(run_dir / "cost.json", cost)
        summary = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        log.info("metrics: %s -> %s", summary, run_dir / "metrics.json")
    run_logger.finish()
    dist.barrier("the end of the run (rank 0 writes metrics.json)")
