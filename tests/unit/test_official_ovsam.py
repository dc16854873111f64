"""The authors' Open-Vocabulary SAM files (the released sam2clip / clip2sam files): key layout at the real
sizes, import -> export -> import identity, both file structures, clear errors."""

from __future__ import annotations

import pytest
import torch
from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench.testing.coco_synthetic import write_synthetic_coco
from sambench.errors import CheckpointError
from sambench_plugins.methods.ovsam.official_checkpoint import (
    export_official_clip2sam, export_official_sam2clip, official_clip2sam_tensors, official_sam2clip_tensors,
)
from sambench.registry import DATASETS, METHODS, load_plugins
from sambench.structures import collate

load_plugins()
SMALL = dict(clip={"model": "tiny_rn", "allow_random_init": True}, adapter={"depth": 2, "num_heads": 2})


def build(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return METHODS.get("ovsam")(sam=SamBackbone(**TINY_SAM), **{**SMALL, "allow_untrained": True, **kwargs})


def perturbed(seed: int):
    """A model whose adapter, FPN and head differ from a fresh build's."""
    model = build()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*official_sam2clip_tensors(model).values(), *official_clip2sam_tensors(model).values()]:
            tensor.add_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return model


def test_the_official_layout_at_vit_h_and_rn50x16():
    with torch.device("meta"):
        model = METHODS.get("ovsam")(sam=SamBackbone(name="sam", variant="vit_h", allow_random_init=True),
                                     clip={"model": "RN50x16", "allow_random_init": True}, allow_untrained=True)
        sam2clip, clip2sam = official_sam2clip_tensors(model), official_clip2sam_tensors(model)
    assert len(sam2clip) == 86 and sum(t.numel() for t in sam2clip.values()) == 134_087_648
    shapes = {k: tuple(v.shape) for k, v in sam2clip.items()}
    assert shapes["neck_student.pos_embed"] == (1, 64, 64, 1280)
    assert shapes["neck_student.patch_embeds.0.projection.weight"] == (1280, 384, 4, 4)
    assert shapes["neck_student.patch_embeds.3.projection.weight"] == (3072, 1280, 2, 2)  # ConvTranspose
    assert shapes["neck_student.level_encoding.weight"] == (4, 1280)
    assert shapes["neck_student.blocks.3.attn.rel_pos_h"] == (27, 80) and shapes["neck_student.blocks.4.attn.rel_pos_w"] == (127, 80)
    assert shapes["neck_student.neck.2.weight"] == (256, 256, 3, 3)
    fpn = {k: v for k, v in clip2sam.items() if k.startswith("fpn_neck.")}
    head = {k: v for k, v in clip2sam.items() if k.startswith("mask_decoder.")}
    assert (len(fpn), sum(t.numel() for t in fpn.values())) == (16, 3_835_904)
    assert (len(head), sum(t.numel() for t in head.values())) == (103, 4_031_104)
    assert tuple(head["mask_decoder.mask_decoder.mask_tokens.weight"].shape) == (1, 256)
    assert tuple(head["mask_decoder.label_mlp.layers.2.weight"].shape) == (768, 256)
    assert tuple(head["mask_decoder.roi_conv.0.conv.weight"].shape) == (768, 256, 1, 1)
    assert tuple(fpn["fpn_neck.lateral_convs.3.conv.weight"].shape) == (256, 3072, 1, 1)
    assert not any("iou" in k or "output_hypernetworks_mlps.1" in k for k in head)


@pytest.mark.parametrize("structure", ["bare", "state_dict", "ddp"])
def test_import_export_import_is_the_identity(tmp_path, structure):
    donor = perturbed(1)
    files = {"s1": export_official_sam2clip(donor), "s2": export_official_clip2sam(donor)}
    for name, state in files.items():
        if structure == "ddp":
            state = {f"module.{k}": v for k, v in state.items()}
        torch.save(state if structure == "bare" else {"state_dict": state, "meta": {"epoch": 12}}, tmp_path / f"{name}.pth")
    model = build(sam2clip_checkpoint=str(tmp_path / "s1.pth"), clip2sam_checkpoint=str(tmp_path / "s2.pth"),
                  allow_untrained=False)
    again = {"s1": export_official_sam2clip(model), "s2": export_official_clip2sam(model)}
    for name in files:
        assert files[name].keys() == again[name].keys()
        assert all(torch.equal(files[name][k], again[name][k]) for k in files[name]), name
    assert torch.equal(model.adapter.pos_embed, donor.adapter.pos_embed)  # from the file, as the official loader


def test_an_imported_model_predicts_as_its_donor(tmp_path):
    donor = perturbed(2)
    torch.save(export_official_sam2clip(donor), tmp_path / "s1.pth")
    torch.save(export_official_clip2sam(donor), tmp_path / "s2.pth")
    model = build(sam2clip_checkpoint=str(tmp_path / "s1.pth"), clip2sam_checkpoint=str(tmp_path / "s2.pth"))
    root = write_synthetic_coco(tmp_path / "coco", num_images=1)
    batch = collate([DATASETS.get("coco_ov")(split="eval", root=str(root))[0]])
    expected, got = donor.predict(batch)[0], model.predict(batch)[0]
    assert torch.equal(expected.masks, got.masks) and torch.equal(expected.class_ids, got.class_ids)
    assert torch.allclose(expected.scores, got.scores)


def test_wrong_files_are_named(tmp_path):
    donor = build()
    s1, s2 = export_official_sam2clip(donor), export_official_clip2sam(donor)
    s2.pop("mask_decoder.label_token.weight")
    torch.save(s2, tmp_path / "no_label.pth")
    with pytest.raises(CheckpointError, match=r"missing \['label.token.weight'\]"):
        build(clip2sam_checkpoint=str(tmp_path / "no_label.pth"))
    torch.save({**s1, "backbone.stem.0.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"keys outside neck_student.*backbone.stem.0.weight"):
        build(sam2clip_checkpoint=str(tmp_path / "extra.pth"))
    torch.save(s1, tmp_path / "swapped.pth")
    with pytest.raises(CheckpointError, match="not OV-SAM's.*clip2sam_coco_rn50x16.pth"):
        build(clip2sam_checkpoint=str(tmp_path / "swapped.pth"))
    s1["neck_student.level_encoding.weight"] = torch.zeros(4, 7)
    torch.save(s1, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"adapter.level_embedding.weight has shape \(4, 7\)"):
        build(sam2clip_checkpoint=str(tmp_path / "shape.pth"))
