"""ResNet CLIP (OV-SAM's RN50x16) through the CLIP wrapper: stage maps and the attnpool head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sambench.backbones.clip import ClipBackbone
from sambench.errors import ConfigError


def test_stage_features_and_attnpool_compose_to_the_clip_image_embedding():
    clip = ClipBackbone(model="tiny_rn", allow_random_init=True)
    pixels = torch.randn(2, 3, 64, 64)
    stages = clip.stage_features(pixels)
    assert [tuple(s.shape[-2:]) for s in stages] == [(16, 16), (8, 8), (4, 4), (2, 2)]  # strides 4..32
    assert [s.shape[1] for s in stages] == [32, 64, 128, 256]
    torch.testing.assert_close(clip.pool_regions(stages[-1]), clip.clip.visual(pixels))
    with pytest.raises(ConfigError, match="ViT"):
        clip.dense_features([np.zeros((8, 8, 3), np.uint8)])


def test_vit_models_have_no_stage_features():
    with pytest.raises(ConfigError, match="ResNet"):
        ClipBackbone(model="tiny", allow_random_init=True).stage_features(torch.randn(1, 3, 224, 224))
