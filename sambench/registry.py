"""Registries for methods, datasets and evaluators, and the plugin loader.

``methods/`` and ``datasets/`` at the repository root are *plugin folders*: they are imported
under the package name ``sambench_plugins`` (``sambench_plugins.methods.ovsam.fpn``) so that a
top-level ``datasets`` package is never installed or put on ``sys.path`` (Hugging Face
``datasets`` keeps working). A plugin is a module (``datasets/coco_ov.py``) or a package
(``methods/ovsam/``: the method, its helpers, its official-checkpoint mapping and its README).

Each registered method class declares ``TASK`` (or, for a method that solves several tasks such
as the SAM 3 reference, ``TASKS`` in order of preference) and each dataset class declares
``TASKS`` (a tuple), :class:`sambench.tasks.Task` objects; a method can run on a dataset only if
one of its tasks is among the dataset's (:func:`task_for`).

A variant that differs from a class only in constructor arguments is a :class:`Preset`
registered under its own name (``refcocog``, ``dit_layerwise``, ``spaprompt``...), not a subclass.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
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


class Preset:
    """A named variant of a class: other constructor defaults (as ``functools.partial``) and/or
    arguments it fixes (removed from its signature; passing one is a ConfigError).

    Calling it builds ``cls(**{**defaults, **kwargs, **fixed})``; attribute reads (``TASK``,
    ``TASKS``, ``NAME``...) go to ``cls``; ``inspect.signature`` gives the variant's arguments
    (what ``check_section`` and the composition root read).
    """

    def __init__(self, cls: type, *, defaults: dict | None = None, fixed: dict | None = None, doc: str | None = None):
        self.cls, self.defaults, self.fixed = cls, dict(defaults or {}), dict(fixed or {})
        parameters = inspect.signature(cls).parameters
        unknown = sorted((set(self.defaults) | set(self.fixed)) - set(parameters))
        if unknown:
            raise TypeError(f"preset of {cls.__name__}: {', '.join(unknown)} not constructor arguments")
        self.__doc__ = doc or cls.__doc__
        self.__signature__ = inspect.Signature([
            p.replace(default=self.defaults.get(name, p.default)) for name, p in parameters.items()
            if name not in self.fixed
        ])

    def __call__(self, **kwargs):
        clash = sorted(set(kwargs) & set(self.fixed))
        if clash:
            fixed = ", ".join(f"{key}={self.fixed[key]!r}" for key in clash)
            raise ConfigError(f"{fixed} is what this preset of {self.cls.__name__} is (pick another name instead)")
        return self.cls(**{**self.defaults, **kwargs, **self.fixed})

    def __getattr__(self, name: str):
        if "cls" not in self.__dict__:  # while unpickling
            raise AttributeError(name)
        return getattr(self.cls, name)

    def __repr__(self) -> str:
        arguments = {**self.defaults, **self.fixed}
        return f"Preset({self.cls.__name__}, {', '.join(f'{k}={v!r}' for k, v in arguments.items())})"


def register_preset(registry: Registry, name: str, cls: type, *, defaults: dict | None = None,
                    fixed: dict | None = None, doc: str | None = None) -> Preset:
    """Register ``Preset(cls, ...)`` under ``name`` and return it."""
    preset = Preset(cls, defaults=defaults, fixed=fixed, doc=doc)
    registry.register_module(name=name, module=preset)
    return preset


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


def lookup(registry: Registry, name: str) -> type | Preset:
    """Get a registered class (or :class:`Preset`) by name or raise a ConfigError listing the valid names."""
    load_plugins()
    cls = registry.get(name) if name in registry.module_dict else None
    if cls is None:
        valid = sorted(registry.module_dict)
        raise ConfigError(
            f"unknown {registry.name} '{name}'{closest(name, valid)}; valid: {', '.join(valid)}"
        )
    return cls


def method_tasks(method_cls) -> tuple:
    """The tasks a method class solves: its ``TASKS`` (several, in order of preference) or ``(TASK,)``."""
    return tuple(getattr(method_cls, "TASKS", None) or (method_cls.TASK,))


def task_for(method_cls, dataset_cls):
    """The first of the method's tasks that the dataset serves (None: they do not fit)."""
    return next((task for task in method_tasks(method_cls) if task in dataset_cls.TASKS), None)


def check_pairing(method: str, dataset: str) -> None:
    """Raise a ConfigError when ``method`` solves no task that ``dataset`` can serve."""
    method_cls = lookup(METHODS, method)
    if task_for(method_cls, lookup(DATASETS, dataset)) is not None:
        return
    fitting = sorted(n for n, c in DATASETS.module_dict.items() if task_for(method_cls, c) is not None)
    solved = method_tasks(method_cls)
    tasks = ("task" if len(solved) == 1 else "tasks") + " '" + ", ".join(str(task) for task in solved) + "'"
    raise ConfigError(
        f"method '{method}' ({tasks}) cannot run on dataset '{dataset}'; "
        f"datasets that fit: {', '.join(fitting) or 'none'}"
    )
