"""Adapters from the ``peft`` library, injected into chosen ``nn.Linear`` layers of a method,
and folded back into the base weights (merge).

sambench never wraps the method in a ``PeftModel``: it calls ``peft.inject_adapter_in_model``
on the module that owns the layers (a backbone's upstream model, or the method itself), so the
method, its checkpoints and DDP stay as they are; adapter tensors are ordinary trainable
parameters (``...qkv.lora_A.default.weight``) and the wrapped layer's own weights move to
``...qkv.base_layer.weight`` until :func:`merge_adapters` folds them.
"""

from __future__ import annotations

import re
import sys

from torch import nn

from sambench.errors import ConfigError

#: adapter kinds of method.peft.adapter -> what they are
ADAPTERS = {
    "lora": "LoRA: W + (alpha/rank) B A, A rank×in, B out×rank (B starts at zero)",
    "dora": "DoRA: LoRA with a learnt per-output magnitude",
    "loha": "LoHa: low-rank Hadamard product update",
    "lokr": "LoKr: low-rank Kronecker product update",
    "ia3": "(IA)3: a learnt scale per output channel (rank, alpha and dropout unused)",
}


def peft_config(adapter: str, target_regex: str, *, rank: int, alpha: float, dropout: float):
    """The ``peft`` config of ``adapter`` for the layers whose names fully match ``target_regex``."""
    import peft  # here: importing peft (and transformers with it) takes seconds

    if adapter in ("lora", "dora"):
        return peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_regex,
                               use_dora=adapter == "dora")
    if adapter == "loha":
        return peft.LoHaConfig(r=rank, alpha=alpha, rank_dropout=dropout, target_modules=target_regex)
    if adapter == "lokr":
        return peft.LoKrConfig(r=rank, alpha=alpha, rank_dropout=dropout, target_modules=target_regex)
    if adapter == "ia3":
        return peft.IA3Config(target_modules=target_regex, feedforward_modules=[])
    raise ConfigError(f"unknown method.peft.adapter '{adapter}'; valid: {', '.join(ADAPTERS)} (or null)")


def inject(root: nn.Module, relative_names: list[str], adapter: str, **sizes) -> None:
    """Add ``adapter`` to the layers of ``root`` named ``relative_names`` (exact names)."""
    from peft import inject_adapter_in_model

    regex = "|".join(re.escape(name) for name in relative_names)
    try:
        inject_adapter_in_model(peft_config(adapter, f"^(?:{regex})$", **sizes), root)
    except (ValueError, TypeError) as exc:  # e.g. a target that is no Linear / Conv layer
        raise ConfigError(f"method.peft: peft cannot add a {adapter} adapter to {relative_names[:3]}: {exc}") from None


def adapter_layers(module: nn.Module) -> list[nn.Module]:
    """The peft-wrapped layers inside ``module`` (none, without importing peft, when nothing has)."""
    if "peft" not in sys.modules:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in module.modules() if isinstance(m, BaseTunerLayer)]


def merge_adapters(module: nn.Module) -> int:
    """Fold every adapter inside ``module`` into its layer's weights and put the plain layer
    back in its place (state-dict keys as without adapters); returns how many layers merged.
    Predictions are unchanged up to float rounding."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    swaps = [(parent, name, child) for parent in module.modules() for name, child in parent._modules.items()
             if isinstance(child, BaseTunerLayer)]
    for parent, name, child in swaps:
        child.merge(safe_merge=True)  # refuses to write NaN/inf into the weights
        parent._modules[name] = child.get_base_layer()
    return len(swaps)
