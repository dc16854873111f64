"""``tools/export_official.py``: write a sambench run's weights in the authors' file layouts, so
a model trained here runs in the official code.

The run folder's ``config.yaml`` rebuilds the model (its backbone / CLIP / stage files must still
be where the config says), ``checkpoints/last.pt`` fills the trained tensors (EMA when the run
kept one, as evaluation uses); LoRA and other ``method.peft`` adapters are merged into the
base weights. Written atomically into ``out``:

- ``sam2clip`` run: ``sam2clip_<sam>_<clip>.pth`` (``neck_student.*``);
- ``clip2sam`` / ``ovsam`` run: that file (the stage-1 adapter it was built with) and
  ``clip2sam_<dataset>_<clip>.pth`` (``fpn_neck.*`` + ``mask_decoder.*``);
- ``dit_layerwise`` / ``dit_e2e`` run: ``dit_<method>.pth`` (``{'epoch', 'state_dict', 'lr'}``).
With the paper's models the names are the released ones (``sam2clip_vith_rn50x16.pth``, ...).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from sambench.cli.build import build_backbone, build_method
from sambench.checkpoint import LAST, load_checkpoint, load_trainable, save_atomic
from sambench.errors import ConfigError
from sambench.peft import adapter_layers, merge_adapters

log = logging.getLogger("sambench")


def load_run(run_dir: Path):
    """(config, model with the run's trained weights) of a run folder."""
    config_file, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / LAST
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a sambench run folder (no config.yaml)")
    cfg = OmegaConf.load(config_file)
    cfg.cache.enabled = False
    model = build_method(cfg, build_backbone(cfg))
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        weights = state["ema"]["shadow"] if state.get("ema") else state["trainable"]
        load_trainable(model.trainable_parameters(), weights, checkpoint)
        if adapter_layers(model):  # the authors' layouts hold plain weights: adapters are folded in
            log.info("method.peft: %d adapted layers merged into their weights", merge_adapters(model))
    elif cfg.method.name != "ovsam":  # an ovsam eval run has its weights in its stage files
        raise ConfigError(f"no trained weights in {run_dir} (expected {checkpoint})")
    return cfg, model


def export_run(run_dir: str | Path, out: str | Path, ddp_prefix: bool = False) -> list[Path]:
    """Write the official files of ``run_dir`` into ``out``; returns their paths."""
    cfg, model = load_run(Path(run_dir))
    files = model.official_files(  # the method knows its authors' layout (methods/<name>/official_checkpoint.py)
        name=cfg.method.name, backbone=cfg.backbone.get("variant", "sam").replace("_", ""), dataset=cfg.dataset.name,
        ddp_prefix=ddp_prefix,
    )
    out = Path(out)
    paths = []
    for file_name, state in files.items():
        save_atomic(state, out / file_name)
        log.info("wrote %s (%d tensors)", out / file_name, len(state.get("state_dict", state)))
        paths.append(out / file_name)
    return paths
