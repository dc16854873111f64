"""The SAM2CLIP adapter: ViT-H sizes (≈129 M parameters, spec), shapes, SAM's position embedding,
and a distillation step that lowers the MSE to a fixed teacher embedding."""

from __future__ import annotations

import pytest
import torch
from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench_plugins.methods.ovsam.adapter import Sam2ClipAdapter

TINY = dict(in_channels=(32, 64, 128, 256), dim=32, num_heads=2, depth=2, grid=64, window=14)


def stages(batch: int = 1, size: int = 256) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(batch, c, size // s, size // s) for c, s in zip(TINY["in_channels"], (4, 8, 16, 32))]


def test_vit_h_sizes_match_the_spec_parameter_count():
    with torch.device("meta"):
        adapter = Sam2ClipAdapter()
    count = sum(p.numel() for p in adapter.parameters())
    assert 128.5e6 < count < 129.5e6  # "≈129 M params with ViT-H dims"
    assert [b.window_size for b in adapter.blocks] == [14, 14, 14, 14, 0]
    assert isinstance(adapter.patch_embeds[3], torch.nn.ConvTranspose2d) and adapter.patch_embeds[0].stride == (4, 4)
    assert not adapter.pos_embed.requires_grad and "pos_embed" in dict(adapter.named_buffers())


def test_forward_shape_and_every_stage_contributes():
    adapter = Sam2ClipAdapter(**{**TINY, "grid": 16})
    inputs = stages()
    out = adapter(inputs)
    assert out.shape == (1, 256, 16, 16)
    for i in range(4):
        changed = [s.clone() for s in inputs]
        changed[i] += 1.0
        assert (adapter(changed) - out).abs().max() > 1e-4


def test_position_embedding_is_copied_from_sam():
    sam = SamBackbone(**TINY_SAM)
    adapter = Sam2ClipAdapter(**TINY)
    adapter.copy_pos_embed(sam._raw_sam().image_encoder.pos_embed)
    assert torch.equal(adapter.pos_embed, sam._raw_sam().image_encoder.pos_embed)
    with pytest.raises(ValueError, match="does not fit"):
        Sam2ClipAdapter(**{**TINY, "dim": 64, "grid": 64}).copy_pos_embed(sam._raw_sam().image_encoder.pos_embed)


def test_distillation_steps_lower_the_mse_on_a_fixed_batch():
    adapter = Sam2ClipAdapter(**{**TINY, "grid": 16})
    inputs, teacher = stages(batch=2), torch.randn(2, 256, 16, 16)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-3, weight_decay=0.05)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(adapter(inputs), teacher)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
