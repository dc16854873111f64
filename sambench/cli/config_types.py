"""Typed checks of the composed config, once, before anything is built.

Each config section is checked against the type hints of the constructor it feeds (the
training factories, the method, the dataset, the backbone): ``trainer.optim.lr=fast`` or ``method.threshold=abc``
fail with a message that names the key, the value and the expected type. Values the engine
needs in a range (batch sizes, steps, learning rate, ...) are checked too.
"""

from __future__ import annotations

import inspect
import numbers
import types
import typing
from pathlib import Path

from sambench.errors import ConfigError
from sambench.registry import Preset

_NOT_ARGUMENTS = {"self", "sam", "run_dir", "class_names", "cache_dir", "split", "method", "train_set", "eval_set",
                  "evaluator", "device", "run_logger", "hooks"}

#: trainer keys with a range: key (dotted below ``trainer``) -> (test, what is expected)
TRAINER_RANGES = {
    "batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "num_workers": (lambda v: v >= 0, "an integer >= 0"),
    "max_steps": (lambda v: v is None or v >= 0, "null or an integer >= 0"),
    "max_epochs": (lambda v: v is None or v >= 0, "null or a number >= 0"),
    "accumulate": (lambda v: v >= 1, "an integer >= 1"),
    "grad_clip": (lambda v: v is None or v > 0, "null or a number > 0"),
    "seed": (lambda v: v >= 0, "an integer >= 0"),
    "optim.lr": (lambda v: v > 0, "a number > 0"),
    "optim.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "optim.eps": (lambda v: v > 0, "a number > 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "optim.betas": (lambda v: len(v) == 2 and all(isinstance(b, numbers.Real) and 0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.every": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "checkpoint.every": (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    "ema.decay": (lambda v: v is None or 0 < v < 1, "null or a number in (0, 1)"),
}
DEVICES = ("auto", "cpu", "cuda")


def type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return {list: "a list", tuple: "a list", dict: "a mapping"}.get(origin, getattr(origin, "__name__", str(origin)))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             list: "a list", tuple: "a list", Path: "a path"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def matches(value, hint) -> bool:
    """Does a plain config value (from YAML / the command line) fit a type hint?"""
    if hint is typing.Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin is not None:
        hint = origin
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint in (str, Path):
        return isinstance(value, str)
    if hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint is dict:
        return isinstance(value, dict)
    return True  # other classes (modules, callables): not a config value


def signature_hints(cls) -> tuple[dict[str, object], bool]:
    """Keyword parameters of ``cls``'s constructor (following ``**kwargs`` up the MRO) with their
    type hints, and whether unknown keys are accepted (a ``**kwargs`` nobody names). A
    :class:`~sambench.registry.Preset` has its class's, less the arguments it fixes."""
    if isinstance(cls, Preset):
        hints, open_ended = signature_hints(cls.cls)
        return {k: v for k, v in hints.items() if k not in cls.fixed}, open_ended
    hints: dict[str, object] = {}
    for klass in getattr(cls, "__mro__", [cls]):
        init = klass.__init__ if isinstance(klass, type) else klass
        if init is object.__init__:
            return hints, False
        try:
            params = inspect.signature(init).parameters
            resolved = typing.get_type_hints(init)
        except (TypeError, ValueError, NameError):
            return hints, True
        open_ended = False
        for name, param in params.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_ended = True
            elif param.kind is not inspect.Parameter.VAR_POSITIONAL and name not in hints:
                hints[name] = resolved.get(name, inspect.Parameter.empty)
        if not open_ended:
            return hints, False
    return hints, True


def check_section(section: str, cls, values: dict, ignore: tuple[str, ...] = ()) -> None:
    """Every key of ``values`` must be a constructor argument of ``cls`` of the right type."""
    hints, open_ended = signature_hints(cls)
    check_values(section, {k: v for k, v in hints.items() if k not in _NOT_ARGUMENTS}, values, ignore, open_ended)


def check_values(section: str, hints: dict, values: dict, ignore: tuple[str, ...] = (), open_ended: bool = False) -> None:
    """Every key of ``values`` must be in ``hints`` (name -> type hint) with a value of that type."""
    for key, value in values.items():
        if key in ignore:
            continue
        if key not in hints:
            if open_ended:
                continue
            raise ConfigError(f"unknown key {section}.{key}; valid: {', '.join(sorted(hints))}")
        if value is not None and not matches(value, hints[key]):  # null: the constructor says what is missing
            raise ConfigError(f"{section}.{key}={value!r}: expected {type_name(hints[key])}")


def config_keys(factory) -> dict[str, object]:
    """The config keys of a composition-root factory (function or class): its keyword
    parameters that have a default, with their type hints."""
    resolved = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    return {name: resolved.get(name, inspect.Parameter.empty)
            for name, param in inspect.signature(factory).parameters.items()
            if param.default is not inspect.Parameter.empty
            and param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


def check_trainer(values: dict) -> None:
    """The trainer section: types from the signatures of the factories each group feeds
    (``sambench/cli/build_training.py``), then ranges and the device."""
    from sambench.cli import build_training as build
    from sambench.engine.hooks import CheckpointHook
    from sambench.engine.preemption import PreemptionHook, signal_numbers
    from sambench.engine.schedules import lr_multiplier

    check_values("trainer", config_keys(build.build_trainer), values, ignore=("device", "collective_timeout"))
    groups = {
        "optim": config_keys(build.build_optimizer),
        "schedule": {**config_keys(lr_multiplier), **config_keys(build.build_scheduler)},
        "eval": config_keys(build.build_evaluation_hook),
        "checkpoint": config_keys(CheckpointHook),
        "ema": config_keys(build.build_ema_hook),
        "preemption": config_keys(PreemptionHook),
    }
    for group, hints in groups.items():
        if isinstance(values.get(group), dict):
            check_values(f"trainer.{group}", hints, values[group])
    for key, (test, expected) in TRAINER_RANGES.items():
        group, _, name = key.rpartition(".")
        where = values.get(group) if group else values
        if isinstance(where, dict) and name in where and not _passes(test, where[name]):
            raise ConfigError(f"trainer.{key}={where[name]!r}: expected {expected}")
    signal_numbers((values.get("preemption") or {}).get("signals") or [])
    name = (values.get("optim") or {}).get("name", "adamw")
    if name not in build.OPTIMIZERS:
        raise ConfigError(f"unknown trainer.optim.name '{name}'; valid: {', '.join(build.OPTIMIZERS)}")
    device = values.get("device", "auto")
    if device not in DEVICES:
        raise ConfigError(f"trainer.device={device!r}: expected one of {', '.join(DEVICES)} (torchrun picks the GPU of each rank)")
    timeout = values.get("collective_timeout", 1800)
    if not (isinstance(timeout, numbers.Real) and not isinstance(timeout, bool) and timeout > 0):
        raise ConfigError(f"trainer.collective_timeout={timeout!r}: expected a number of seconds > 0")


def _passes(test, value) -> bool:
    try:
        return bool(test(value))
    except TypeError:  # e.g. null where a number is needed
        return False


FLAGS = ("save_predictions", "save_overlays", "use_ema", "traceback")


def check_flags(cfg: dict) -> None:
    """Top-level true/false keys."""
    for key in FLAGS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise ConfigError(f"{key}={cfg[key]!r}: expected true/false")
