"""DIT-SAM model parts: joint ViT blocks, token injection wiring, decoder paths, training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sambench.testing import TINY_SAM
from segment_anything.modeling.image_encoder import Block

from sambench.backbones.joint_attention import joint_block, resized_pos_embed
from sambench.backbones.sam import SamBackbone
from sambench.backbones.sam_extensions import run_image_encoder, run_mask_decoder
from sambench.errors import ConfigError
from sambench_plugins.methods.dit.decoder_layers import ExtraDecoderLayers
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Sample

load_plugins()
TEXT = {"allow_random_init": True}
NO_AUGMENT = {"min_side": 512, "color_jitter": 0.0, "flip": 0.0}


def random_block(window: int, dim: int = 32) -> Block:
    block = Block(dim=dim, num_heads=2, use_rel_pos=True, window_size=window, input_size=(14, 14) if window else (64, 64))
    with torch.no_grad():
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
    return block


@pytest.mark.parametrize("window, attention", [(14, "windowed"), (0, "global"), (0, "windowed")])
def test_joint_block_without_text_is_the_upstream_block(window, attention):
    torch.manual_seed(0)
    block = random_block(window)
    image = torch.randn(2, 32, 32, 32)
    text, out = joint_block(block, None, image, attention=attention)
    assert text is None
    torch.testing.assert_close(out, block(image), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention, window", [("global", 0), ("global", 14), ("windowed", 14)])
def test_masked_padding_text_is_invisible_and_unmasked_text_is_not(attention, window):
    torch.manual_seed(0)
    block = random_block(window)
    image, text = torch.randn(1, 32, 32, 32), torch.randn(1, 6, 32)
    mask = torch.tensor([[True, True, True, False, False, False]])
    changed = text.clone()
    changed[:, 3:] = torch.randn(1, 3, 32)
    _, a = joint_block(block, text, image, mask, attention)
    _, b = joint_block(block, changed, image, mask, attention)
    torch.testing.assert_close(a, b)
    _, c = joint_block(block, changed, image, None, attention)
    assert (a - c).abs().max() > 1e-4


def test_text_reaches_image_tokens_in_windowed_blocks():
    torch.manual_seed(0)
    block = random_block(14)
    image = torch.randn(1, 32, 32, 32)
    _, a = joint_block(block, torch.randn(1, 4, 32), image, attention="windowed")
    _, b = joint_block(block, torch.randn(1, 4, 32), image, attention="windowed")
    assert (a - b).abs().amax(dim=-1).gt(1e-6).all()  # every image token (every window) sees the text


def test_image_encoder_at_512_resizes_the_position_embedding():
    sam = SamBackbone(**TINY_SAM)
    encoder = sam._raw_sam().image_encoder
    pixels = torch.randn(1, 3, 512, 512)
    x = encoder.patch_embed(pixels) + resized_pos_embed(encoder.pos_embed, (32, 32))
    for block in encoder.blocks:
        x = block(x)
    expected = encoder.neck(x.permute(0, 3, 1, 2))
    torch.testing.assert_close(run_image_encoder(encoder, pixels, lambda i, block, t: block(t)), expected)
    assert resized_pos_embed(encoder.pos_embed, (64, 64)) is encoder.pos_embed


def test_paired_decoder_batch_equals_one_call_per_image():
    torch.manual_seed(0)
    sam = SamBackbone(**TINY_SAM)
    embeddings, sparse = torch.randn(3, 256, 32, 32), torch.randn(3, 5, 256)
    dense = torch.randn(3, 256, 32, 32)
    pe = sam._raw_sam().prompt_encoder.pe_layer((32, 32))[None]
    together, _ = run_mask_decoder(sam._raw_sam().mask_decoder, embeddings, pe, sparse, dense, False)
    for i in range(3):
        alone, _ = run_mask_decoder(sam._raw_sam().mask_decoder, embeddings[i : i + 1], pe, sparse[i : i + 1], dense[i : i + 1], False)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (3, 1, 128, 128)


def test_extra_decoder_layers_append_to_the_upstream_transformer():
    torch.manual_seed(0)
    sam = SamBackbone(**TINY_SAM)
    transformer = sam._raw_sam().mask_decoder.transformer
    src, pe, tokens = torch.randn(2, 256, 8, 8), torch.randn(2, 256, 8, 8), torch.randn(2, 7, 256)
    none = ExtraDecoderLayers(num_layers=0)
    for got, want in zip(none(transformer, src, pe, tokens), transformer(src, pe, tokens)):
        torch.testing.assert_close(got, want)
    two = ExtraDecoderLayers(num_layers=2)
    assert len(two.layers) == 2
    assert (two(transformer, src, pe, tokens)[0] - transformer(src, pe, tokens)[0]).abs().max() > 1e-3


def build(name: str, **kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("text_encoder", TEXT)
    return METHODS.get(name)(sam=SamBackbone(**TINY_SAM), **kwargs)


def norm1_inputs(model) -> list[torch.Tensor]:
    """The sequence entering each ViT block ([text ; image] in global attention)."""
    seen = []
    for block in model.sam._raw_sam().image_encoder.blocks:
        block.norm1.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()) and None)
    return seen


@pytest.mark.parametrize("name", ["dit_layerwise", "dit_e2e"])
def test_zero_initialised_projections_carry_zeros_into_every_block(name):
    model = build(name).eval()
    seen = norm1_inputs(model)
    pixels = torch.randn(1, 3, 512, 512)
    model.logits(pixels, ["the red square on the left"])
    assert len(seen) == len(model.sam._raw_sam().image_encoder.blocks)
    for sequence in seen:
        assert sequence.shape[1] == 20 + 32 * 32
        assert torch.count_nonzero(sequence[:, :20]) == 0
        assert torch.count_nonzero(sequence[:, 20:]) > 0


@pytest.mark.parametrize("name", ["dit_layerwise", "dit_e2e"])
def test_injection_wiring(name):
    """L-DIT: every projection reads the BERT features. E-DIT: projection 0 reads them, projection
    i reads the text tokens block i-1 produced (recomputed here from that block's inputs)."""
    model = build(name).eval()
    with torch.no_grad():
        for layer in model.injection.projections:
            layer.weight.normal_(0, 0.1)
    sources, tokens = [], []

    def record(module, args, out):
        sources.append(args[0].detach())
        tokens.append(out.detach())

    for layer in model.injection.projections:
        layer.register_forward_hook(record)
    seen = norm1_inputs(model)
    texts = ["the red square on the left", "green circle"]
    features, _ = model.text(texts)
    with torch.no_grad():
        model.logits(torch.randn(2, 3, 512, 512), texts)
    blocks = model.sam._raw_sam().image_encoder.blocks
    assert len(sources) == len(blocks)
    torch.testing.assert_close(sources[0], features.detach())
    for i in range(1, len(blocks)):
        if name == "dit_layerwise":
            torch.testing.assert_close(sources[i], features.detach())
        else:
            image_in = seen[i - 1][:, 20:].reshape(2, 32, 32, -1)
            # norm1 sees the raw residual stream [text ; image]: its image part is the block's image input
            previous_text, _ = joint_block(blocks[i - 1], tokens[i - 1], image_in, None)
            torch.testing.assert_close(sources[i], previous_text, atol=1e-5, rtol=1e-5)
            assert (sources[i] - features).abs().max() > 1e-3


def test_method_options_are_checked():
    with pytest.raises(ConfigError, match="2 or 4"):
        build("sam_text_declayers", extra_decoder_layers=3)
    with pytest.raises(ConfigError, match="attention"):
        build("dit_layerwise", attention="local")
    with pytest.raises(ConfigError, match="multiple of 16"):
        build("dit_layerwise", image_size=500)


def test_trainable_parameters_follow_the_options():
    full = set(build("dit_layerwise").trainable_parameters())
    assert any(n.startswith("sam.sam.image_encoder.") for n in full)
    assert any(n.startswith("injection.projections.") for n in full)
    assert not any("iou_prediction_head" in n or "point_embeddings" in n for n in full)
    assert not any(n.startswith("text.bert.encoder.layer.1.") or "pooler" in n for n in full)  # only layer 0 feeds layer=1
    frozen = set(build("dit_layerwise", train_image_encoder=False, text_encoder={**TEXT, "trainable": False}).trainable_parameters())
    assert not any(n.startswith(("sam.sam.image_encoder.", "text.")) for n in frozen)
    assert any(n.startswith("injection.projections.") for n in frozen) and "text_proj.weight" in frozen


def referring_batch() -> Batch:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        image = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
        masks = torch.zeros(1, 64, 96, dtype=torch.bool)
        masks[0, 10:40, 10 + 40 * i : 40 + 40 * i] = True
        samples.append(Sample(index=i, image=image, masks=masks, texts=[["left square", "the left one"], ["right square"]][i]))
    return Batch(samples)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit_layerwise", "dit_e2e", "sam_text", "sam_text_declayers"])
def test_a_few_training_steps_lower_the_loss_on_a_fixed_batch(name):
    model = build(name, augment=NO_AUGMENT, **({"projection_dropout": 0.0} if name.startswith("dit") else {}))
    params = list(model.trainable_parameters().values())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    batch = referring_batch()
    torch.manual_seed(1)
    losses = []
    for _ in range(4):
        loss = model.training_step(batch)["loss_bce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in params)  # DDP-safe: every trainable parameter is used


def test_prediction_is_one_mask_at_the_original_size():
    model = build("dit_layerwise").eval()
    batch = referring_batch()
    predictions = model.predict(batch)
    assert [p.index for p in predictions] == [0, 1]
    assert predictions[0].masks.shape == (1, 64, 96) and predictions[0].masks.dtype == torch.bool
    assert predictions[0].logits.shape == (512, 512)


def test_text_width_differing_from_the_vit_gets_one_extra_projection():
    """ViT-H case (768 -> 1280) in miniature: BERT 32-d, ViT 64-d; one default-initialised
    Linear(32, 64) first, then zero-initialised 64x64 projections per block."""
    torch.manual_seed(0)
    sam = SamBackbone(**{**TINY_SAM, "encoder_embed_dim": 64})
    model = METHODS.get("dit_layerwise")(sam=sam, text_encoder=TEXT).eval()
    assert model.injection.text_to_vision.weight.shape == (64, 32)
    assert model.injection.text_to_vision.weight.abs().max() > 0
    assert [p.weight.shape for p in model.injection.projections] == [(64, 64)] * 2
    assert model.logits(torch.randn(1, 3, 512, 512), ["red"]).shape == (1, 1, 512, 512)
    assert build("dit_layerwise").injection.text_to_vision is None  # equal widths: none


@pytest.mark.parametrize("attention", ["global", "windowed"])
def test_bf16_autocast_trains_and_predicts(attention):
    """Mixed dtypes inside the joint attention (bias, padding, masks) under trainer.precision=bf16."""
    model = build("dit_layerwise", augment=NO_AUGMENT, attention=attention, mask_text_padding=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(referring_batch())["loss_bce"]
    loss.backward()
    assert torch.isfinite(loss) and model.injection.projections[0].weight.grad is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.predict(referring_batch())[0].masks.shape == (1, 64, 96)
