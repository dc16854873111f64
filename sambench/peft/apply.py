"""``method.peft``: adapters, and which parameters train or stay frozen, on top of a method's own
choice; applied once to the built method, before the optimizer sees its parameters.

Order: the method freezes what it freezes (its constructor); ``train`` makes parts trainable
(full fine-tuning of ``encoder``, say); ``freeze`` freezes parts again except the parameters
``keep`` names; ``adapter`` adds adapters to the ``targets`` layers, whose own weights are then
frozen while the adapter tensors train. Checkpoints hold the trainable tensors only (adapters
included), and record these settings so evaluation rebuilds the same structure.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from sambench.errors import ConfigError
from sambench.peft.adapters import ADAPTERS, adapter_layers, inject
from sambench.peft.scopes import backbones, named_parts, named_targets, raw_prefix, select

log = logging.getLogger(__name__)
#: the seed of the adapters' random initialisation (LoRA's A): built alike by every rank and every run
ADAPTER_INIT_SEED = 0
#: the settings that decide the parameter structure (``merge`` only decides how evaluation runs)
STRUCTURE_KEYS = ("adapter", "targets", "rank", "alpha", "dropout", "train", "freeze", "keep")


@dataclass(frozen=True)
class PeftSettings:
    """The ``method.peft`` section (``conf/method/peft/*.yaml`` documents each key)."""

    adapter: str | None = None
    targets: tuple[str, ...] = ()
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    train: tuple[str, ...] = ()
    freeze: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    merge: bool = True

    @classmethod
    def from_dict(cls, values: dict | None) -> PeftSettings:
        """Checked settings from a plain mapping (None: nothing changes)."""
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown key method.peft.{unknown[0]}; valid: {', '.join(sorted(known))}")
        for key in ("targets", "train", "freeze", "keep"):
            value = values.get(key) or ()
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"method.peft.{key}={value!r}: expected a list of names or regular expressions")
            values[key] = tuple(value)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.adapter is not None and self.adapter not in ADAPTERS:
            raise ConfigError(f"unknown method.peft.adapter '{self.adapter}'; valid: {', '.join(ADAPTERS)} or null")
        if self.adapter and not self.targets:
            raise ConfigError(f"method.peft.adapter={self.adapter} needs method.peft.targets (e.g. [encoder_attention])")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"method.peft.rank={self.rank!r}: expected an integer >= 1")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            raise ConfigError(f"method.peft.alpha={self.alpha!r}: expected a number > 0")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"method.peft.dropout={self.dropout!r}: expected a number in [0, 1)")
        if not isinstance(self.merge, bool):
            raise ConfigError(f"method.peft.merge={self.merge!r}: expected true/false")

    @property
    def active(self) -> bool:
        return bool(self.adapter or self.train or self.freeze)

    def structure(self) -> dict:
        """What a checkpoint records: the keys that decide the parameter names and shapes."""
        values = asdict(self)
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items() if key in STRUCTURE_KEYS}


def apply_peft(method: nn.Module, settings: PeftSettings) -> dict | None:
    """Apply ``settings`` to ``method`` in place; returns a summary (parameter counts, adapted
    layers) or None when the settings change nothing."""
    if not settings.active:
        return None
    from sambench.method import SambenchMethod

    if type(method).training_step is SambenchMethod.training_step:
        raise ConfigError(f"method.peft: {type(method).__name__} has no training step (training-free method); "
                          "drop method.peft")
    params = dict(method.named_parameters())
    names, parts = list(params), named_parts(method)
    for name in select(list(settings.train), parts, names, "method.peft.train", "parameter"):
        params[name].requires_grad_(True)
    keep = set(select(list(settings.keep), parts, names, "method.peft.keep", "parameter"))
    for name in select(list(settings.freeze), parts, names, "method.peft.freeze", "parameter"):
        if name not in keep:
            params[name].requires_grad_(False)
    layers: list[str] = []
    if settings.adapter:
        modules = [name for name, _ in method.named_modules()]
        layers = select(list(settings.targets), named_targets(method), modules, "method.peft.targets", "module")
        add_adapters(method, layers, settings)
    _drop_stale_caches(method)
    method.peft_settings = settings.structure()
    summary = _summary(method, settings, len(layers))
    log.info("method.peft: %s", describe(summary))
    return summary


def add_adapters(method: nn.Module, layers: list[str], settings: PeftSettings) -> None:
    """Adapters on the ``layers`` (full module names); their own weights freeze, every other
    parameter keeps its ``requires_grad``, the adapter tensors train."""
    before = {name: p.requires_grad for name, p in method.named_parameters()}
    sizes = dict(rank=settings.rank, alpha=float(settings.alpha), dropout=float(settings.dropout))
    with torch.random.fork_rng(devices=[]):  # the same adapters every time; the run's random stream untouched
        torch.manual_seed(ADAPTER_INIT_SEED)
        for root, relative in _by_owner(method, layers):
            inject(root, relative, settings.adapter, **sizes)
    for name, param in method.named_parameters():
        if ".base_layer." in name:
            param.requires_grad_(False)
        else:
            param.requires_grad_(before.get(name, True))  # new names are the adapter tensors


def _by_owner(method: nn.Module, layers: list[str]) -> list[tuple[nn.Module, list[str]]]:
    """Layers grouped by the module they are injected through: a backbone's upstream model
    (private: not reachable by attribute from the method) or the method itself."""
    owners = [(raw_prefix(path, backbone), backbone._modules[backbone.RAW]) for path, backbone in backbones(method)]
    groups: dict[int, tuple[nn.Module, list[str]]] = {}
    for layer in layers:
        prefix, root = next(((p, r) for p, r in owners if layer.startswith(p)), ("", method))
        groups.setdefault(id(root), (root, []))[1].append(layer[len(prefix):])
    return list(groups.values())


def _drop_stale_caches(method: nn.Module) -> None:
    """A backbone whose image encoder trains (its own weights, or adapter tensors in it) no
    longer matches its cached embeddings (keyed by the released weights): its cache goes."""
    for _, backbone in backbones(method):
        if backbone.cache is not None and backbone.encoder_trains():
            backbone.cache = None
            log.info("method.peft: %s's image encoder changes, so its embedding cache is off", backbone.name)


def _summary(method: nn.Module, settings: PeftSettings, layers: int) -> dict:
    adapter = sum(p.numel() for layer in adapter_layers(method) for n, p in layer.named_parameters()
                  if not n.startswith("base_layer."))
    params = list(method.parameters())
    return {"adapter": settings.adapter, "adapted_layers": layers, "adapter_params": adapter,
            "trainable_params": sum(p.numel() for p in params if p.requires_grad),
            "total_params": sum(p.numel() for p in params) - adapter}


def describe(summary: dict) -> str:
    """One line: what trains, of how many parameters."""
    share = 100 * summary["trainable_params"] / max(1, summary["total_params"])
    adapters = (f"{summary['adapter']} on {summary['adapted_layers']} layers ({summary['adapter_params']:,} adapter "
                f"parameters); " if summary["adapter"] else "")
    return f"{adapters}{summary['trainable_params']:,} of {summary['total_params']:,} parameters train ({share:.2f} %)"


def settings_for_checkpoint(configured: PeftSettings, saved: dict | None, path) -> PeftSettings:
    """The settings that rebuild the model a checkpoint was trained as: the ones it recorded
    (``meta.peft``) when the config sets none (``merge`` stays the config's), the config's when
    they agree; a ConfigError when both are set and differ."""
    if not saved:
        if configured.active:
            raise ConfigError(f"checkpoint {path} was trained without method.peft, but method.peft is set "
                              f"({configured.structure()}); drop method.peft")
        return configured
    if not configured.active:
        log.info("method.peft from checkpoint %s: %s", path, saved)
        return PeftSettings.from_dict({**saved, "merge": configured.merge})
    if configured.structure() != PeftSettings.from_dict(saved).structure():
        raise ConfigError(f"checkpoint {path} was trained with method.peft={saved}, but method.peft is "
                          f"{configured.structure()}; drop method.peft (the checkpoint's is used) or set the same")
    return configured
