"""Where the PEFT options point in a method: named **parts** (``encoder``, ``decoder``,
``prompt_encoder``, a method's own such as DIT's ``text_encoder``) select parameters to train or
freeze, named **targets** (``encoder_attention``, ``decoder_attention``, ...) select the layers
that get adapters.

Each backbone declares its parts and targets relative to its private upstream model
(:meth:`~sambench.backbones.interface.SegmentationBackbone.peft_parts` /
:meth:`~sambench.backbones.interface.SegmentationBackbone.peft_targets`), a method its own ones
relative to itself; here they become regular expressions over the method's full parameter and
module names (``sam.sam.image_encoder.blocks.0.attn.qkv``). Anything that is not a name is a
regular expression matched (``re.fullmatch``) against those full names.
"""

from __future__ import annotations

import re

from torch import nn

from sambench.backbones.interface import SegmentationBackbone
from sambench.errors import ConfigError


def backbones(method: nn.Module) -> list[tuple[str, SegmentationBackbone]]:
    """(module path, backbone) of every segmentation backbone inside ``method``."""
    return [(path, module) for path, module in method.named_modules() if isinstance(module, SegmentationBackbone)]


def raw_prefix(path: str, backbone: SegmentationBackbone) -> str:
    """Full-name prefix of a backbone's upstream model: ``sam.sam.`` for ``method.sam``."""
    return f"{path}.{backbone.RAW}." if path else f"{backbone.RAW}."


def _table(method: nn.Module, kind: str) -> dict[str, str]:
    """``kind`` = parts | targets -> name -> regex over the method's full names."""
    patterns: dict[str, list[str]] = {}
    for path, backbone in backbones(method):
        prefix = re.escape(raw_prefix(path, backbone))
        for name, pattern in getattr(backbone, f"peft_{kind}")().items():
            patterns.setdefault(name, []).append(f"{prefix}(?:{pattern})")
    for name, pattern in getattr(method, f"peft_{kind}", lambda: {})().items():
        patterns.setdefault(name, []).append(pattern)
    return {name: "|".join(f"(?:{p})" for p in group) for name, group in patterns.items()}


def named_parts(method: nn.Module) -> dict[str, str]:
    """Part name -> regex over full parameter names."""
    return _table(method, "parts")


def named_targets(method: nn.Module) -> dict[str, str]:
    """Target name -> regex over full module names."""
    return _table(method, "targets")


def select(items: list[str], table: dict[str, str], names: list[str], key: str, what: str) -> list[str]:
    """The ``names`` (parameter or module names) selected by ``items`` (names of ``table`` or
    regexes); an item that selects nothing is a ConfigError naming ``key`` and the choices."""
    chosen: list[str] = []
    for item in items:
        pattern = table.get(item, item)
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{key}: '{item}' is neither a name ({', '.join(sorted(table)) or 'none'}) "
                              f"nor a valid regular expression ({exc})") from None
        hits = [name for name in names if regex.fullmatch(name)]
        if not hits:
            example = names[0] if names else "?"
            raise ConfigError(f"{key}: '{item}' matches no {what} of this method and backbone; names: "
                              f"{', '.join(sorted(table)) or 'none'}, or a regular expression over full {what} "
                              f"names such as '{re.escape(example)}'")
        chosen += [name for name in hits if name not in chosen]
    return chosen
