"""Registries for methods, datasets and evaluators, and the plugin loader.

``methods/`` and ``datasets/`` at the repository root are *plugin folders*: they are imported
under the package name ``sambench_plugins`` (``sambench_plugins.methods.ovsam.fpn``) so that a
top-level ``datasets`` package is never installed or put on ``sys.path`` (Hugging Face
``datasets`` keeps working). A plugin is a module (``datasets/coco_ov.py``) or a package
(``methods/ovsam/``: the method, its helpers, its official-checkpoint mapping and its README).

Each registered method class declares ``TASK`` and each dataset class declares ``TASKS`` (a tuple),
:class:`sambench.tasks.Task` objects; a method can run on a dataset only if its task is among the
dataset's.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from pathlib import Path

from mmengine.registry import Registry

from sambench import PLUGIN_PACKAGE, REPO_ROOT, install_plugin_package
from sambench.errors import ConfigError

METHODS = Registry("method")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")

PLUGIN_FOLDERS = ("methods", "datasets")
_loaded = False


def plugin_names(folder: Path) -> list[str]:
    """Module (``x.py``) and package (``x/__init__.py``) names in a plugin folder, sorted."""
    modules = [f.stem for f in folder.glob("*.py") if f.stem != "__init__"]
    packages = [d.name for d in folder.iterdir() if (d / "__init__.py").is_file()]
    return sorted(modules + packages)


def load_plugins(root: Path = REPO_ROOT) -> None:
    """Import every plugin of ``methods/`` and ``datasets/`` and every ``sambench/evaluation``
    module so their classes register."""
    global _loaded
    if _loaded:
        return
    install_plugin_package(root)
    evaluation = importlib.import_module("sambench.evaluation")
    for info in pkgutil.iter_modules(evaluation.__path__):
        importlib.import_module(f"sambench.evaluation.{info.name}")
    for folder in PLUGIN_FOLDERS:
        for name in plugin_names(root / folder):
            importlib.import_module(f"{PLUGIN_PACKAGE}.{folder}.{name}")
    _loaded = True


def closest(name: str, choices) -> str:
    """Return `` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def lookup(registry: Registry, name: str) -> type:
    """Get a registered class by name or raise a ConfigError listing the valid names."""
    load_plugins()
    cls = registry.get(name) if name in registry.module_dict else None
    if cls is None:
        valid = sorted(registry.module_dict)
        raise ConfigError(
            f"unknown {registry.name} '{name}'{closest(name, valid)}; valid: {', '.join(valid)}"
        )
    return cls


def check_pairing(method: str, dataset: str) -> None:
    """Raise a ConfigError when ``method`` solves a task that ``dataset`` cannot serve."""
    task = lookup(METHODS, method).TASK
    if task in lookup(DATASETS, dataset).TASKS:
        return
    fitting = sorted(n for n, c in DATASETS.module_dict.items() if task in c.TASKS)
    raise ConfigError(
        f"method '{method}' (task '{task}') cannot run on dataset '{dataset}'; "
        f"datasets that fit: {', '.join(fitting) or 'none'}"
    )
