"""Activation checkpointing of encoder blocks (``trainer.activation_checkpointing``): on tiny SAM,
HQ-SAM (ViT and TinyViT) and SAM 2.1 backbones the output and every encoder gradient equal those
without it (with and without a caller's ``block_fn``), autograd keeps fewer bytes for backward,
the re-composed encoders equal the upstream forwards bit for bit, and the trainer's switch."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from sambench.backbones.checkpointing import checkpointed
from sambench.backbones.sam import SamBackbone
from sambench.backbones.sam2 import Sam2Backbone
from sambench.backbones.sam2_encoder import run_sam2_forward_image
from sambench.backbones.sam_hq import SamHqBackbone
from sambench.backbones.sam_hq_extensions import run_tiny_vit_encoder
from sambench.cli.build_training import enable_activation_checkpointing
from sambench.cli.config_types import check_trainer
from sambench.errors import ConfigError
from sambench.testing import TINY_SAM

TINY_HQ = dict(TINY_SAM, name="sam_hq_tiny")
TINY_SAM2 = dict(name="sam2_tiny", variant="tiny", allow_random_init=True)
BUILDERS = {"sam": lambda: SamBackbone(**TINY_SAM), "sam_hq": lambda: SamHqBackbone(**TINY_HQ),
            "sam2": lambda: Sam2Backbone(**TINY_SAM2)}
#: backbones whose ViT blocks take a caller's block_fn (SAM 2's Hiera refuses one)
VIT = ("sam", "sam_hq")


@pytest.fixture(scope="module")
def backbones():
    built = {}
    for name, build in BUILDERS.items():
        backbone = build()
        backbone.set_trainable(image_encoder=True)
        built[name] = backbone
    return built


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))


def dropout_block_fn(index, block, x):
    """A caller's block_fn with randomness (checkpointing must replay the same dropout mask)."""
    return F.dropout(block(x), p=0.2, training=True) * (1.0 + index)


def encoder_blocks(backbone) -> list[torch.nn.Module]:
    """The blocks activation checkpointing wraps (ViT, Hiera or TinyViT blocks)."""
    raw = backbone._modules[backbone.RAW]
    encoder = raw.image_encoder
    if hasattr(encoder, "trunk"):
        return list(encoder.trunk.blocks)
    if hasattr(encoder, "layers"):
        return [block for layer in encoder.layers for block in layer.blocks]
    return list(encoder.blocks)


def forward_backward(backbone, pixels, enabled: bool, block_fn=None):
    """(features, {name: grad} of the backbone's parameters, bytes autograd kept for backward:
    the storages of saved tensors, plus each checkpointed block's input, which the checkpoint keeps)."""
    backbone.set_activation_checkpointing(enabled)
    backbone.zero_grad(set_to_none=True)
    storages: dict[int, int] = {}
    inputs: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    def record_input(module, args):
        inputs.setdefault(id(module), args[0].untyped_storage().nbytes())

    handles = [block.register_forward_pre_hook(record_input) for block in encoder_blocks(backbone)]
    torch.manual_seed(1)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            features = backbone.encode_features(pixels, block_fn)
        outputs = (features.embedding, *features.levels.values())
        sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in outputs).backward()
    finally:
        backbone.set_activation_checkpointing(False)
        for handle in handles:
            handle.remove()
    assert len(inputs) == len(encoder_blocks(backbone))
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    kept = sum(storages.values()) + (sum(inputs.values()) if enabled else 0)
    return features, grads, kept


def assert_same(a, b):
    features_a, grads_a, _ = a
    features_b, grads_b, _ = b
    torch.testing.assert_close(features_b.embedding, features_a.embedding, rtol=0, atol=0)
    for name in features_a.levels:
        torch.testing.assert_close(features_b.levels[name], features_a.levels[name], rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_output_and_encoder_gradients_equal_with_checkpointing(backbones, pixels, name):
    backbone = backbones[name]
    plain = forward_backward(backbone, pixels, False)
    assert_same(plain, forward_backward(backbone, pixels, True))
    assert any("image_encoder" in n for n in plain[1])  # the encoder really trained


@pytest.mark.parametrize("name", VIT)
def test_a_callers_block_fn_is_checkpointed_too(backbones, pixels, name):
    backbone = backbones[name]
    plain = forward_backward(backbone, pixels, False, dropout_block_fn)
    assert_same(plain, forward_backward(backbone, pixels, True, dropout_block_fn))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_checkpointing_keeps_fewer_bytes_for_backward(backbones, pixels, name):
    backbone = backbones[name]
    _, _, plain = forward_backward(backbone, pixels, False)
    _, _, checkpointed_bytes = forward_backward(backbone, pixels, True)
    assert checkpointed_bytes < 0.8 * plain, (checkpointed_bytes, plain)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_evaluation_and_the_switched_off_path_are_unchanged(backbones, pixels, name):
    backbone = backbones[name]
    with torch.no_grad():
        reference = backbone.encode_features(pixels)
        backbone.set_activation_checkpointing(True)
        try:
            under_no_grad = backbone.encode_features(pixels)
        finally:
            backbone.set_activation_checkpointing(False)
    assert torch.equal(under_no_grad.embedding, reference.embedding)
    assert not backbone.activation_checkpointing


def test_sam2_recomposed_forward_image_equals_upstream(backbones, pixels):
    raw = backbones["sam2"]._raw_model()
    with torch.no_grad():
        upstream = raw.forward_image(pixels)
        ours = run_sam2_forward_image(raw, pixels)
    assert upstream.keys() == ours.keys()
    assert torch.equal(ours["vision_features"], upstream["vision_features"])
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(ours[key]) == len(upstream[key])
        assert all(torch.equal(a, b) for a, b in zip(ours[key], upstream[key]))


def test_sam2_still_refuses_a_callers_block_fn(backbones, pixels):
    backbones["sam2"].set_activation_checkpointing(True)
    try:
        with pytest.raises(ConfigError, match="block_fn"):
            backbones["sam2"].encode_features(pixels, lambda i, block, x: block(x))
    finally:
        backbones["sam2"].set_activation_checkpointing(False)


@pytest.mark.slow
def test_light_hq_sam_tiny_vit_checkpointing():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        light = SamHqBackbone(name="sam_hq_vit_tiny", variant="vit_tiny", allow_random_init=True)
    light.set_trainable(image_encoder=True)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(2))
    encoder = light._raw_sam().image_encoder
    with torch.no_grad():
        up_embedding, up_interm = encoder(pixels)
        embedding, early = run_tiny_vit_encoder(encoder, pixels)
    assert torch.equal(embedding, up_embedding) and torch.equal(early, up_interm[0])
    plain = forward_backward(light, pixels, False)
    checkpointed_run = forward_backward(light, pixels, True)
    assert_same(plain, checkpointed_run)
    assert checkpointed_run[2] < 0.8 * plain[2]


def test_stateful_block_fn_of_dit_is_replayed_correctly():
    """E-DIT carries text tokens from block i-1 to block i; the backward re-run of block i must
    see block i-1's tokens, not the last block's (gradients equal with and without)."""
    from sambench.registry import METHODS, load_plugins

    load_plugins()
    torch.manual_seed(0)
    model = METHODS.get("dit_e2e")(sam=SamBackbone(**TINY_SAM), text_encoder={"allow_random_init": True})
    with torch.no_grad():
        for layer in model.injection.projections:
            layer.weight.normal_(0, 0.2)
    texts, pixels = ["the red square", "a green circle on the left"], torch.randn(2, 3, 512, 512)

    def grads(enabled: bool) -> dict[str, torch.Tensor]:
        model.sam.set_activation_checkpointing(enabled)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        model.train()
        model.logits(pixels, texts).square().mean().backward()
        model.sam.set_activation_checkpointing(False)
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed_grads = grads(False), grads(True)
    assert plain.keys() == checkpointed_grads.keys()
    assert any(n.startswith("sam.sam.image_encoder.") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed_grads[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointed_block_fn_runs_plainly_without_grad():
    block = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(checkpointed(None)(0, block, x), block(x))
    assert checkpointed(None)(0, block, x).grad_fn is not None


# ----- the trainer's switch -------------------------------------------------------------------
class _Method(torch.nn.Module):
    def __init__(self, backbone):
        super().__init__()
        self.sam = backbone


def test_the_switch_turns_on_trained_encoders_only(caplog):
    trained, frozen = SamBackbone(**TINY_SAM), SamBackbone(**TINY_SAM)
    trained.set_trainable(image_encoder=True)
    frozen.set_trainable(mask_decoder=True)
    with caplog.at_level(logging.INFO, logger="sambench"):
        assert enable_activation_checkpointing(_Method(frozen)) == []
    assert not frozen.activation_checkpointing and "has no effect" in caplog.text
    caplog.clear()
    lora_like = SamBackbone(**TINY_SAM)
    lora_like.set_trainable(mask_decoder=True)
    lora_like._raw_sam().image_encoder.blocks[0].attn.qkv.bias.requires_grad_(True)  # one trainable encoder tensor
    with caplog.at_level(logging.INFO, logger="sambench"):
        assert enable_activation_checkpointing(_Method(torch.nn.ModuleList([trained, lora_like]))) == [trained,
                                                                                                     lora_like]
    assert trained.activation_checkpointing and lora_like.activation_checkpointing
    assert "activation checkpointing of the image encoder blocks of sam_tiny" in caplog.text


def test_the_trainer_key_is_checked():
    check_trainer({"activation_checkpointing": True})
    check_trainer({"activation_checkpointing": False})
    with pytest.raises(ConfigError, match=r"trainer.activation_checkpointing='yes': expected"):
        check_trainer({"activation_checkpointing": "yes"})
