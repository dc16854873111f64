"""The backbone registry: a ``backbone/<name>.yaml`` config names its ``family`` (``sam``,
``sam2``, ``sam_hq``; ``sam3``: SAM 3's concept model, for method=sam3 only) and the family's
class is built with the file's other keys.

Backbone modules import their upstream package (``segment_anything``, ``sam2``,
``segment_anything_hq``) when a model is built, not at import, so reading a family's class and
capabilities (compose-time checks) costs nothing.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from mmengine.registry import Registry
from omegaconf import OmegaConf

from sambench import REPO_ROOT
from sambench.errors import ConfigError

BACKBONES = Registry("backbone")
#: modules that register the backbone families
FAMILY_MODULES = ("sambench.backbones.sam", "sambench.backbones.sam2", "sambench.backbones.sam_hq",
                  "sambench.backbones.sam3")
#: the family of a backbone config without a ``family`` key (configs written before there were others)
DEFAULT_FAMILY = "sam"


def backbone_class(family: str) -> type:
    """The class registered for ``family`` (``sam`` | ``sam2`` | ``sam_hq``)."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    cls = BACKBONES.get(family)
    if cls is None:
        raise ConfigError(f"backbone.family={family!r} is unknown; known: {', '.join(sorted(BACKBONES.module_dict))}")
    return cls


def backbone_configs(folder: Path = REPO_ROOT / "conf" / "backbone") -> dict[str, dict]:
    """Every backbone config in ``conf/backbone`` by file name -> its keys (unresolved)."""
    return {path.stem: OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            for path in sorted(folder.glob("*.yaml"))}


def kind_of(config: dict) -> str:
    """The kind of model a config builds (``promptable`` | ``concept``: a method's ``BACKBONE_KIND``)."""
    return backbone_class(config.get("family", DEFAULT_FAMILY)).KIND


def capabilities_of(config: dict) -> frozenset[str]:
    """The capabilities of the backbone a config builds (they may depend on its ``variant``)."""
    cls = backbone_class(config.get("family", DEFAULT_FAMILY))
    return cls.capabilities_for(config.get("variant"))
