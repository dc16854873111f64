"""``tools/export_official.py``: write a sambench run's weights in the authors' file layouts, so
a model trained here runs in the official code.

The run folder's ``config.yaml`` rebuilds the model (its backbone / CLIP / stage files must still
be where the config says), ``checkpoints/last.pt`` fills the trained tensors (EMA when the run
kept one, as evaluation uses). Written atomically into ``out``:

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
from sambench.engine.checkpoint import LAST, load_checkpoint, save_atomic
from sambench.engine.loop import load_trainable
from sambench.errors import ConfigError
from sambench.official.ovsam_checkpoint import export_official_clip2sam, export_official_sam2clip

log = logging.getLogger("sambench")
OVSAM = ("clip2sam", "ovsam")
DIT = ("dit_layerwise", "dit_e2e")


def load_run(run_dir: Path):
    """(config, model with the run's trained weights) of a run folder."""
    config_file, checkpoint = run_dir / "config.yaml", run_dir / "checkpoints" / LAST
    if not config_file.is_file():
        raise ConfigError(f"{run_dir} is not a sambench run folder (no config.yaml)")
    cfg = OmegaConf.load(config_file)
    cfg.cache.enabled = False
    if cfg.method.name not in (*OVSAM, *DIT, "sam2clip"):
        raise ConfigError(f"method '{cfg.method.name}' has no official layout; exportable: sam2clip, "
                          f"{', '.join(OVSAM)}, {', '.join(DIT)}")
    model = build_method(cfg, build_backbone(cfg))
    if checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        weights = state["ema"]["shadow"] if state.get("ema") else state["trainable"]
        load_trainable(model.trainable_parameters(), weights, checkpoint)
    elif cfg.method.name != "ovsam":  # an ovsam eval run has its weights in its stage files
        raise ConfigError(f"no trained weights in {run_dir} (expected {checkpoint})")
    return cfg, model


def export_run(run_dir: str | Path, out: str | Path, ddp_prefix: bool = False) -> list[Path]:
    """Write the official files of ``run_dir`` into ``out``; returns their paths."""
    cfg, model = load_run(Path(run_dir))
    out = Path(out)
    name = cfg.method.name
    files: dict[str, dict] = {}
    if name in DIT:
        from sambench.official.dit_checkpoint import export_official_dit

        files[f"dit_{name}.pth"] = export_official_dit(model, ddp_prefix=ddp_prefix)
    else:
        sam = cfg.backbone.get("variant", "sam").replace("_", "")
        clip = str(cfg.method.clip.model).lower().replace("-", "")
        files[f"sam2clip_{sam}_{clip}.pth"] = export_official_sam2clip(model)
        if name in OVSAM:
            files[f"clip2sam_{cfg.dataset.name.removesuffix('_ov')}_{clip}.pth"] = export_official_clip2sam(model)
    paths = []
    for file_name, state in files.items():
        save_atomic(state, out / file_name)
        log.info("wrote %s (%d tensors)", out / file_name, len(state.get("state_dict", state)))
        paths.append(out / file_name)
    return paths
