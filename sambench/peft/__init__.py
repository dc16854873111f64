"""Parameter-efficient fine-tuning: ``method.peft`` (adapters from ``peft``, train / freeze
lists) applied to any method that trains; see :mod:`sambench.peft.apply`."""

from sambench.peft.adapters import ADAPTERS, adapter_layers, merge_adapters
from sambench.peft.apply import PeftSettings, apply_peft, describe
from sambench.peft.scopes import named_parts, named_targets

__all__ = ["ADAPTERS", "PeftSettings", "adapter_layers", "apply_peft", "describe", "merge_adapters", "named_parts",
           "named_targets"]
