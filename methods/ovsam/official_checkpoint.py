"""Open-Vocabulary SAM's released files <-> sambench's ``clip2sam`` / ``ovsam`` modules
(the authors' released files; their key layout is listed below and in ``README.md``).

- ``sam2clip_vith_rn50x16.pth``: ``neck_student.*`` (86 tensors) = the SAM2CLIP adapter, its
  ``pos_embed`` buffer included;
- ``clip2sam_{coco,lvis}_rn50x16.pth``: ``fpn_neck.*`` (16) + ``mask_decoder.*`` (103) = FPN,
  SAM's decoder with one mask token and MLP 0 only, the label token and its MLP, the RoI conv.
Files hold a bare state dict or ``{'state_dict': ...}`` (both load, ``weights_only=True``).
Every tensor of a file must map to exactly one sambench tensor and every mapped sambench tensor
must be filled. SAM's prompt encoder comes from the SAM checkpoint, CLIP from its own file, as in
the official code; the unused SAM decoder parts (IoU token/head, mask tokens 1–3, MLPs 1–3) keep
the SAM checkpoint's values.
"""

from __future__ import annotations

import re
from collections import OrderedDict
import torch

from sambench.backbones.interface import require_sam_v1
from sambench.errors import CheckpointError

SAM2CLIP_PREFIX = "neck_student."
DECODER = "sam.sam.mask_decoder."


def _adapter_name(key: str) -> str:
    """Official ``neck_student.<key>`` (prefix removed) -> sambench ``adapter.<name>``."""
    key = re.sub(r"^patch_embeds\.(\d)\.projection\.", r"patch_embeds.\1.", key)
    key = key.replace("level_encoding.", "level_embedding.")
    return f"adapter.{key}"


def _clip2sam_name(key: str) -> str | None:
    """Official clip2sam key -> sambench parameter name (None = not an OV-SAM key)."""
    if key.startswith("fpn_neck."):
        return "fpn." + key[len("fpn_neck."):].replace(".conv.", ".")
    if key.startswith("mask_decoder.mask_decoder."):
        return DECODER + key[len("mask_decoder.mask_decoder."):]
    if key.startswith("mask_decoder.label_token."):
        return "label.token." + key[len("mask_decoder.label_token."):]
    if key.startswith("mask_decoder.label_mlp."):
        return "label.mlp." + key[len("mask_decoder.label_mlp."):]
    if key == "mask_decoder.roi_conv.0.conv.weight":
        return "region.proj.weight"
    return None


def _official_clip2sam_keys(model) -> list[str]:
    """The official key list for this model's sizes (what the authors' strict loader expects)."""
    keys = [f"fpn_neck.{kind}.{i}.conv.{p}" for kind in ("lateral_convs", "fpn_convs")
            for i in range(len(model.fpn.lateral_convs)) for p in ("weight", "bias")]
    decoder = [key[len(DECODER):] for key in model.state_dict() if key.startswith(DECODER)]  # the raw decoder's names
    for name in decoder:
        if name.startswith(("iou_token", "iou_prediction_head")) or \
                (name.startswith("output_hypernetworks_mlps.") and not name.startswith("output_hypernetworks_mlps.0.")):
            continue
        keys.append(f"mask_decoder.mask_decoder.{name}")
    keys += ["mask_decoder.label_token.weight"] + [f"mask_decoder.label_mlp.{k}" for k in model.label.mlp.state_dict()]
    return keys + ["mask_decoder.roi_conv.0.conv.weight"]


def _assign(model, mapped: dict[str, torch.Tensor], expected: list[str], source: str, option: str) -> None:
    """Copy ``mapped`` (sambench name -> tensor) into ``model``; all of ``expected`` must be there."""
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    missing = [k for k in expected if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    if missing or unexpected:
        raise CheckpointError(f"{option}: {source} does not fit Open-Vocabulary SAM: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]} ({len(missing)} / {len(unexpected)})")
    with torch.no_grad():
        for name, tensor in mapped.items():
            target = own[name]
            if name == DECODER + "mask_tokens.weight" and tensor.shape[0] == 1:
                target = target[:1]  # the single mask token of the official head
            if target.shape != tensor.shape:
                raise CheckpointError(f"{option}: {source}: {name} has shape {tuple(tensor.shape)}, "
                                      f"the model needs {tuple(target.shape)} (another SAM/CLIP size?)")
            target.copy_(tensor)


def load_official_sam2clip(model, state: dict[str, torch.Tensor], source: str) -> None:
    """``neck_student.*`` -> ``model.adapter`` (strict both ways, ``pos_embed`` from the file)."""
    require_sam_v1(model.sam, "official Open-Vocabulary SAM checkpoints")
    unknown = [k for k in state if not k.startswith(SAM2CLIP_PREFIX)]
    mapped = {_adapter_name(k[len(SAM2CLIP_PREFIX):]): v for k, v in state.items() if k.startswith(SAM2CLIP_PREFIX)}
    expected = [f"adapter.{k}" for k in model.adapter.state_dict()]
    if unknown:
        raise CheckpointError(f"method.sam2clip_checkpoint: {source} has keys outside neck_student.*: {unknown[:5]} "
                              f"({len(unknown)}); is it the SAM2CLIP file (sam2clip_vith_rn50x16.pth)?")
    _assign(model, mapped, expected, source, "method.sam2clip_checkpoint")


def load_official_clip2sam(model, state: dict[str, torch.Tensor], source: str) -> None:
    """``fpn_neck.*`` + ``mask_decoder.*`` -> FPN, SAM decoder (used parts), label token, RoI conv."""
    require_sam_v1(model.sam, "official Open-Vocabulary SAM checkpoints")
    unknown = [k for k in state if _clip2sam_name(k) is None]
    if unknown:
        raise CheckpointError(f"method.clip2sam_checkpoint: {source} has keys that are not OV-SAM's: {unknown[:5]} "
                              f"({len(unknown)}); is it clip2sam_coco_rn50x16.pth or clip2sam_lvis_rn50x16.pth?")
    mapped = {_clip2sam_name(k): v for k, v in state.items()}
    expected = [_clip2sam_name(k) for k in _official_clip2sam_keys(model)]
    _assign(model, mapped, expected, source, "method.clip2sam_checkpoint")


def official_sam2clip_tensors(model) -> OrderedDict:
    """``model.adapter`` as the ``neck_student.*`` tensors of ``sam2clip_vith_rn50x16.pth`` (views)."""
    require_sam_v1(model.sam, "official Open-Vocabulary SAM checkpoints")
    out = OrderedDict()
    for name, tensor in model.adapter.state_dict().items():
        key = re.sub(r"^patch_embeds\.(\d)\.", r"patch_embeds.\1.projection.", name).replace("level_embedding.", "level_encoding.")
        out[SAM2CLIP_PREFIX + key] = tensor
    return out


def official_clip2sam_tensors(model) -> OrderedDict:
    """FPN + head as the ``fpn_neck.*`` + ``mask_decoder.*`` tensors of ``clip2sam_*_rn50x16.pth`` (views)."""
    require_sam_v1(model.sam, "official Open-Vocabulary SAM checkpoints")
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    out = OrderedDict()
    for key in _official_clip2sam_keys(model):
        tensor = own[_clip2sam_name(key)]
        out[key] = tensor[:1] if key.endswith("mask_decoder.mask_tokens.weight") else tensor
    return out


def export_official_sam2clip(model) -> OrderedDict:
    """The state dict of ``sam2clip_vith_rn50x16.pth`` (CPU copies)."""
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in official_sam2clip_tensors(model).items())


def export_official_clip2sam(model) -> OrderedDict:
    """The state dict of ``clip2sam_{coco,lvis}_rn50x16.pth`` (CPU copies)."""
    return OrderedDict((k, v.detach().cpu().clone()) for k, v in official_clip2sam_tensors(model).items())
