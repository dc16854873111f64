"""The DIT authors' released checkpoints (wysnzzzz/DIT, L-DIT / E-DIT) <-> sambench's DIT model
(the layout the official ``train.py`` writes and ``test.py`` loads).

An official file is ``{'epoch', 'state_dict', 'optimizer', 'scheduler', 'lr'}`` written by
``train.py``; ``state_dict`` already holds the EMA weights, with ``module.`` before every key
when it was trained under DDP (the released runs: 4 GPUs). Key mapping (official -> sambench):

====================================  ==========================================================
``visual_encoder.probs.{i}.*``        ``injection.projections.{i}.*`` (zero-init Linear(C, C))
``visual_encoder.prob_text.*``        ``injection.text_to_vision.*`` (ViT-H: Linear(768, 1280))
``visual_encoder.*``                  ``sam.sam.image_encoder.*`` (SAM's ViT, 1024²-input shapes)
``prompt_encoder.*``                  ``sam.sam.prompt_encoder.*``
``mask_decoder.*``                    ``sam.sam.mask_decoder.*``
``lang_encoder.bert.*``               ``text.bert.*`` (bert-base-uncased, same names)
``text_proj.*``                       ``text_proj.*`` (sparse prompts, Linear(768, 256))
``query_embeddings`` [1,4,768]        unused by the official forward: ignored on import
``self_attention.*`` (MHA(768, 12))   unused (its call is commented out): ignored on import
====================================  ==========================================================

Import is exact: every tensor of the file is used once (the two unused groups are reported as
ignored) and every parameter and persistent buffer of the sambench model is filled, so a model
built with random weights (SAM, a bert-base-sized BERT) is fully defined by the file. L-DIT and
E-DIT files have the same keys; the variant is the model's (``method=dit_layerwise|dit_e2e``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sambench.backbones.interface import require_sam_v1
from sambench.errors import CheckpointError, ConfigError
from sambench.weights_file import load_weights_file

log = logging.getLogger(__name__)

#: (official prefix, sambench prefix); the first match wins (``probs`` before ``visual_encoder``).
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("visual_encoder.probs.", "injection.projections."),
    ("visual_encoder.prob_text.", "injection.text_to_vision."),
    ("visual_encoder.", "sam.sam.image_encoder."),
    ("prompt_encoder.", "sam.sam.prompt_encoder."),
    ("mask_decoder.", "sam.sam.mask_decoder."),
    ("lang_encoder.bert.", "text.bert."),
    ("text_proj.", "text_proj."),
)
#: Official groups in the file's order (export writes them in this order).
GROUP_ORDER = ("query_embeddings", "visual_encoder.", "prompt_encoder.", "mask_decoder.", "lang_encoder.", "text_proj.",
               "self_attention.")
#: Tensors of the official ``Net`` that its forward never uses (§1.4): not part of sambench's model.
UNUSED_PREFIXES = ("query_embeddings", "self_attention.")
DDP_PREFIX = "module."
#: (ViT width, depth) -> the backbone config that builds it.
BACKBONES = {(768, 12): "sam_vit_b", (1024, 24): "sam_vit_l", (1280, 32): "sam_vit_h"}
#: What the official code runs (the file implies it): method config key -> value.
OFFICIAL_OPTIONS = {"text_encoder.layer": 1, "attention": "global", "image_size": 512, "mask_text_padding": False}
VARIANTS = {"layerwise": "dit_layerwise", "e2e": "dit_e2e"}
EXPECTED = "a DIT checkpoint written by the authors' train.py ({'epoch', 'state_dict', ...}) or its state dict"


@dataclass
class OfficialImport:
    """What :func:`import_official_dit` did."""

    source: str
    method: str  # dit_layerwise | dit_e2e (the model's variant; files do not tell)
    backbone: str  # e.g. sam_vit_b
    loaded: int  # tensors copied into the model
    ignored: list[str] = field(default_factory=list)  # official tensors the official forward never uses
    ddp_prefix: bool = False  # the keys started with 'module.' (a DDP-trained file)
    epoch: int | None = None
    lr: float | None = None

    def summary(self) -> str:
        ddp = ", 'module.' prefix stripped" if self.ddp_prefix else ""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        return (f"loaded official DIT checkpoint {self.source} into {self.method} ({self.backbone}): {self.loaded} "
                f"tensors (EMA weights{epoch}{ddp}); ignored {len(self.ignored)} unused: {', '.join(self.ignored)}")


# ----- key mapping ----------------------------------------------------------------------------------
def sambench_name(official: str) -> str | None:
    """Official key (no ``module.``) -> sambench state-dict key; None for unused or unknown keys."""
    for theirs, ours in KEY_PREFIXES:
        if official.startswith(theirs):
            return ours + official[len(theirs):]
    return None


def official_name(name: str) -> str | None:
    """sambench state-dict key -> official key; None when the official model has no such tensor."""
    for theirs, ours in KEY_PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours):]
    return None


def _group(official: str) -> int:
    return next(i for i, prefix in enumerate(GROUP_ORDER) if official.startswith(prefix))


def official_key_map(model: nn.Module) -> "OrderedDict[str, str]":
    """Official key -> sambench key for every parameter and persistent buffer of a DIT model,
    in the official group order. Works on a model built on the meta device."""
    check_official_options(model)
    pairs, orphans = [], []
    for name in model.state_dict(keep_vars=True):
        official = official_name(name)
        (orphans.append(name) if official is None else pairs.append((official, name)))
    if orphans:  # a sambench tensor the official file cannot fill
        raise CheckpointError(f"the model has {len(orphans)} tensors with no official DIT counterpart (e.g. {orphans[:3]})")
    pairs.sort(key=lambda pair: _group(pair[0]))  # stable: the model's order inside a group
    return OrderedDict(pairs)


def unused_official_tensors(text_dim: int, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """Fresh ``query_embeddings`` [1,4,D] ~ N(0, 0.01) and ``self_attention.*`` of a new
    ``nn.MultiheadAttention(D, ·)`` (in_proj [3D,D], [3D]; out_proj [D,D], [D]), as the official
    ``Net.__init__`` creates them; never used by its forward, but its strict loader wants them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        query = torch.empty(1, 4, text_dim).normal_(0.0, 0.01)
        attention = nn.MultiheadAttention(text_dim, 1)  # the head count does not change any shape
    tensors = OrderedDict(query_embeddings=query)
    tensors.update((f"self_attention.{k}", v.detach().clone()) for k, v in attention.state_dict().items())
    return tensors


def official_layout(model: nn.Module) -> "OrderedDict[str, torch.Size]":
    """Every key of an official file for this model's sizes -> its shape (unused groups included)."""
    own = model.state_dict(keep_vars=True)
    layout = OrderedDict((official, own[name].shape) for official, name in official_key_map(model).items())
    extras = {k: v.shape for k, v in unused_official_tensors(model.text.dim).items()}
    return OrderedDict(sorted({**layout, **extras}.items(), key=lambda item: _group(item[0])))


# ----- checks ---------------------------------------------------------------------------------------
def check_official_options(model: nn.Module) -> None:
    """The file implies the official architecture: L-DIT/E-DIT, BERT layer 1, global attention,
    512² input, text padding not masked, a SAM v1 backbone. A different config is a ConfigError naming the key."""
    require_sam_v1(model.sam, "official DIT checkpoints")
    if getattr(model, "injection", None) is None or getattr(model, "extra_layers", None) is not None:
        raise ConfigError(f"official DIT checkpoints hold an L-DIT/E-DIT model, not {type(model).__name__}: "
                          "use method=dit_layerwise (the released files) or method=dit_e2e")
    actual = {"text_encoder.layer": model.text.layer, "attention": model.attention, "image_size": model.image_size,
              "mask_text_padding": model.mask_text_padding}
    wrong = [f"method.{key}={official} (this model: {actual[key]})"
             for key, official in OFFICIAL_OPTIONS.items() if actual[key] != official]
    if wrong:
        raise ConfigError(f"official DIT checkpoints need the authors' architecture: set {', '.join(wrong)}")


def _vit_size(state: dict, prefix: str) -> tuple[int, int] | None:
    weight = state.get(f"{prefix}patch_embed.proj.weight")
    if weight is None:
        return None
    blocks = {key[len(prefix) + 7:].split(".")[0] for key in state if key.startswith(f"{prefix}blocks.")}
    return int(weight.shape[0]), len(blocks)


def _check_sizes(model: nn.Module, state: dict, name: str) -> None:
    """ViT-B vs ViT-H (and BERT size) from the tensor shapes, before any key-by-key comparison."""
    found = _vit_size(state, "visual_encoder.")
    spec = model.sam.encoder_spec()
    own = (spec.width, spec.depth)
    if found is not None and found != own:
        fits = BACKBONES.get(found)
        hint = f"use backbone={fits}" if fits else "no backbone config has that size"
        raise CheckpointError(
            f"{name} is a DIT checkpoint for a SAM ViT of width {found[0]} with {found[1]} blocks, but "
            f"backbone={model.sam.name} has width {own[0]} and {own[1]} blocks: {hint}")
    words = state.get("lang_encoder.bert.embeddings.word_embeddings.weight")
    bert = model.text.bert.config
    layers = len({k.split(".")[4] for k in state if k.startswith("lang_encoder.bert.encoder.layer.")})
    if words is not None and (tuple(words.shape), layers) != ((bert.vocab_size, bert.hidden_size), bert.num_hidden_layers):
        raise CheckpointError(
            f"{name} holds a BERT with vocabulary {words.shape[0]}, width {words.shape[1]} and {layers} layers, but the "
            f"model's has {bert.vocab_size}, {bert.hidden_size} and {bert.num_hidden_layers}: for the released files set "
            "method.text_encoder.path=null method.text_encoder.size=bert-base "
            "method.text_encoder.tokenizer=<bert-base-uncased vocab.txt>")


def _examples(keys, count: int = 5) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > count else ""
    return ", ".join(keys[:count]) + more


# ----- import ---------------------------------------------------------------------------------------
def read_official_state(source) -> tuple["OrderedDict[str, torch.Tensor]", dict]:
    """A file path, ``{'state_dict': ...}`` or a bare state dict -> (state dict without
    ``module.``, info: name, epoch, lr, ddp_prefix). Optimizer, scheduler, epoch and lr are not used."""
    if isinstance(source, (str, Path)):
        name = str(source)
        content = load_weights_file(Path(source).expanduser(), EXPECTED)
    else:
        name, content = "<in-memory DIT state dict>", source
    if not isinstance(content, dict):
        raise CheckpointError(f"{name} holds a {type(content).__name__}, not a dict (expected {EXPECTED})")
    info = {"name": name, "epoch": None, "lr": None}
    if isinstance(content.get("state_dict"), dict):
        info.update(epoch=content.get("epoch"), lr=content.get("lr"))
        content = content["state_dict"]
    bad = [key for key, value in content.items() if not isinstance(value, torch.Tensor)]
    if bad or not content:
        hint = "; a sambench run checkpoint goes to ckpt=" if "trainable" in content else ""
        raise CheckpointError(f"{name} is not a DIT state dict (top-level keys {_examples(map(str, content), 6)}; "
                              f"expected {EXPECTED}){hint}")
    info["ddp_prefix"] = any(key.startswith(DDP_PREFIX) for key in content)
    state = OrderedDict((key[len(DDP_PREFIX):] if key.startswith(DDP_PREFIX) else key, value) for key, value in content.items())
    return state, info


def import_official_dit(model: nn.Module, source) -> OfficialImport:
    """Fill every tensor of a DIT model from an official checkpoint (path or dict).

    Raises CheckpointError naming the file with the missing keys, unexpected keys and shape
    mismatches (first few and counts), or telling which ``backbone=`` / BERT the file needs;
    ConfigError when the method options are not the official architecture.
    """
    state, info = read_official_state(source)
    name = info["name"]
    key_map = official_key_map(model)  # also checks the architecture options
    _check_sizes(model, state, name)
    own = model.state_dict()
    ignored = [key for key in state if key.startswith(UNUSED_PREFIXES)]
    missing = [key for key in key_map if key not in state]
    unexpected = [key for key in state if key not in key_map and key not in ignored]
    wrong = [f"{key}: file {list(state[key].shape)} vs model {list(own[ours].shape)}"
             for key, ours in key_map.items() if key in state and state[key].shape != own[ours].shape]
    if missing or unexpected or wrong:
        is_sam = any(key.startswith("image_encoder.") for key in state)
        hint = "; it looks like a SAM checkpoint: pass it as backbone.checkpoint" if is_sam else ""
        raise CheckpointError(
            f"{name} does not fit {VARIANTS[model.injection.mode]} with backbone={model.sam.name}{hint}: "
            f"{len(missing)} missing keys ({_examples(missing) or '-'}); {len(unexpected)} unexpected keys "
            f"({_examples(unexpected) or '-'}); {len(wrong)} shape mismatches ({_examples(wrong, 3) or '-'})")
    model.load_state_dict(OrderedDict((ours, state[key]) for key, ours in key_map.items()), strict=True)
    report = OfficialImport(source=name, method=VARIANTS[model.injection.mode], backbone=model.sam.name, loaded=len(key_map),
                            ignored=ignored, ddp_prefix=info["ddp_prefix"], epoch=info["epoch"], lr=info["lr"])
    log.info(report.summary())
    return report


# ----- export ---------------------------------------------------------------------------------------
def export_official_dit(model: nn.Module, ddp_prefix: bool = False, *, epoch: int = 0, lr: float = 0.0) -> dict:
    """The model's current weights in the authors' file layout (§1.2):
    ``{'epoch': epoch, 'state_dict': OrderedDict, 'lr': lr}``, float32 CPU copies.

    ``ddp_prefix=True`` writes ``module.<key>``: the official ``test.py`` loads strictly and, under
    its default 4-GPU config, into a DDP-wrapped net (single-GPU runs need unprefixed keys).
    The unused ``query_embeddings`` and ``self_attention.*`` get fresh values of the right shapes
    (:func:`unused_official_tensors`) so that strict loader accepts the file.
    """
    key_map = official_key_map(model)
    own = model.state_dict()
    tensors = OrderedDict((key, own[ours].detach().to("cpu", torch.float32).clone()) for key, ours in key_map.items())
    tensors.update(unused_official_tensors(model.text.dim))
    ordered = sorted(tensors.items(), key=lambda item: _group(item[0]))
    prefix = DDP_PREFIX if ddp_prefix else ""
    return {"epoch": int(epoch), "state_dict": OrderedDict((prefix + key, value) for key, value in ordered), "lr": float(lr)}
