"""Registries for methods, datasets and evaluators, and the plugin loader.

``methods/`` and ``datasets/`` at the repository root are *plugin folders*: they are imported
under the private package name ``sambench_plugins`` so that a top-level ``datasets`` package is
never installed or put on ``sys.path`` (Hugging Face ``datasets`` keeps working).

Each registered method class declares ``TASK`` and each dataset class declares ``TASKS`` (a tuple),
:class:`sambench.tasks.Task` objects; a method can run on a dataset only if its task is among the
dataset's.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
import types
from pathlib import Path

from mmengine.registry import Registry

from sambench import REPO_ROOT
from sambench.errors import ConfigError

METHODS = Registry("method")
DATASETS = Registry("dataset")
EVALUATORS = Registry("evaluator")

PLUGIN_PACKAGE = "sambench_plugins"
PLUGIN_FOLDERS = ("methods", "datasets")
_loaded = False


def load_plugins(root: Path = REPO_ROOT) -> None:
    """Import every ``methods/*.py``, ``datasets/*.py`` and ``sambench/evaluation`` module so
    their classes register."""
    global _loaded
    if _loaded:
        return
    package = sys.modules.get(PLUGIN_PACKAGE)
    if package is None:
        package = types.ModuleType(PLUGIN_PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[PLUGIN_PACKAGE] = package
    evaluation = importlib.import_module("sambench.evaluation")
    for info in pkgutil.iter_modules(evaluation.__path__):
        importlib.import_module(f"sambench.evaluation.{info.name}")
    for folder in PLUGIN_FOLDERS:
        for file in sorted((root / folder).glob("*.py")):
            if file.stem != "__init__":
                importlib.import_module(f"{PLUGIN_PACKAGE}.{folder}.{file.stem}")
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
