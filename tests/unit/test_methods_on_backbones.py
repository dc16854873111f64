"""What the methods do differently on backbones other than SAM v1, checked without those
backbones: OV-SAM's adapter for a non-ViT teacher and for decoders that need extra feature
levels, grids and point prompts in a frame that stretches the image to the square, and the
SAM-v1-only official files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sambench.backbones.interface import ImageFeatures, require_sam_v1
from sambench.errors import ConfigError
from sambench.registry import load_plugins
from sambench.testing import TINY_SAM

load_plugins()

from sambench_plugins.methods.ovsam.adapter import Sam2ClipAdapter  # noqa: E402
from sambench_plugins.methods.ovsam.center_points import official_center_points  # noqa: E402
from sambench_plugins.methods.ovsam.ovsam import distillation_loss  # noqa: E402
from sambench_plugins.methods.ssprompt.defaults import grid_points  # noqa: E402


def stages(size: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, c, size // s, size // s, generator=g) for c, s in ((8, 4), (8, 8), (16, 16), (16, 32))]


def test_adapter_predicts_the_levels_the_decoder_needs():
    levels = {"high_res_s0": (32, 4), "high_res_s1": (64, 8)}
    adapter = Sam2ClipAdapter(in_channels=(8, 8, 16, 16), dim=16, num_heads=2, depth=1, grid=8, window=4, levels=levels)
    features = adapter.features(stages())
    assert features.embedding.shape == (1, 256, 8, 8)
    assert {n: tuple(v.shape) for n, v in features.levels.items()} == {"high_res_s0": (1, 32, 32, 32),
                                                                        "high_res_s1": (1, 64, 16, 16)}
    assert torch.equal(features.embedding, adapter(stages()))
    # the level heads read the embedding: a 2×2 / 4×4 transposed convolution of it
    head = adapter.level_heads["high_res_s1"]
    expected = F.conv_transpose2d(features.embedding, head.weight, head.bias, stride=2)
    assert torch.allclose(features.levels["high_res_s1"], expected, atol=1e-6)


def test_adapter_without_levels_keeps_the_official_keys():
    adapter = Sam2ClipAdapter(in_channels=(8, 8, 16, 16), dim=16, num_heads=2, depth=1, grid=8, window=4)
    assert not any(key.startswith("level_heads") for key in adapter.state_dict())
    assert adapter.features(stages()).levels == {}


def test_distillation_loss_adds_one_mse_per_predicted_level():
    g = torch.Generator().manual_seed(1)
    s = ImageFeatures(torch.randn(2, 4, 3, 3, generator=g), {"a": torch.randn(2, 2, 6, 6, generator=g)})
    t = ImageFeatures(torch.randn(2, 4, 3, 3, generator=g), {"a": torch.randn(2, 2, 6, 6, generator=g),
                                                             "unused": torch.randn(2, 1, 1, 1, generator=g)})
    expected = ((s.embedding - t.embedding) ** 2).mean() + ((s.levels["a"] - t.levels["a"]) ** 2).mean()
    assert torch.allclose(distillation_loss(s, t), expected)
    assert torch.allclose(distillation_loss(ImageFeatures(s.embedding), t), ((s.embedding - t.embedding) ** 2).mean())


def test_grid_points_fill_a_square_frame():
    wide = grid_points(2, aspect=2.0, frame=1024, keeps_aspect=False)
    assert wide.tolist() == [[256.0, 256.0], [768.0, 256.0], [256.0, 768.0], [768.0, 768.0]]
    assert torch.equal(grid_points(3, 2.0, 1024, True), grid_points(3, 2.0))  # SAM v1 unchanged


def test_center_points_in_a_stretched_frame_resize_the_mask_to_it():
    mask = np.zeros((30, 90), np.uint8)
    mask[5:25, 10:40] = 1
    points = official_center_points(torch.from_numpy(mask)[None].bool(), (64, 64), keeps_aspect=False)
    resized = cv2.resize(mask, (64, 64), interpolation=cv2.INTER_NEAREST)  # the frame itself, no aspect kept
    ys, xs = np.nonzero(resized)
    x, y = points[0, 0].tolist()
    assert xs.min() <= x <= xs.max() and ys.min() <= y <= ys.max() and resized[int(y), int(x)]
    # the same mask in an aspect-keeping frame lands elsewhere (its frame is 22×64)
    assert not torch.equal(points, official_center_points(torch.from_numpy(mask)[None].bool(), (21, 64)))


def test_official_files_are_sam_v1_only():
    from sambench.backbones.sam import SamBackbone

    require_sam_v1(SamBackbone(**TINY_SAM), "official DIT checkpoints")

    class Other(SamBackbone):
        FAMILY = "sam2"

    other = Other(**TINY_SAM)
    with pytest.raises(ConfigError, match=r"official DIT checkpoints: the authors released files for SAM v1 .*sam_tiny"):
        require_sam_v1(other, "official DIT checkpoints")


def compose_cfg(*overrides: str):
    from hydra import compose, initialize_config_dir

    from sambench import REPO_ROOT

    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_dit_on_sam2_is_refused_at_compose_time_naming_the_backbones_that_fit():
    from sambench.cli.build import check_config

    with pytest.raises(ConfigError) as error:
        check_config(compose_cfg("method=dit_layerwise", "backbone=sam2.1_hiera_t"))
    message = str(error.value)
    assert "'dit_layerwise' needs backbone capabilities token_injection" in message and "'sam2.1_hiera_t'" in message
    fits = message.split("backbones that fit: ")[1].split(", ")
    assert {"sam_tiny", "sam_vit_b", "sam_vit_h"} <= set(fits)
    assert not any(name.startswith("sam2") for name in fits)


@pytest.mark.parametrize("method", ["sam_prompted", "persam", "persam_f", "ssprompt", "sam2clip", "clip2sam", "ovsam"])
def test_every_other_method_composes_on_sam2(method):
    from sambench.cli.build import check_config

    check_config(compose_cfg(f"method={method}", "backbone=sam2.1_hiera_l"))


def test_hq_sam_is_no_sam_v1_for_the_official_files():
    from sambench.backbones.sam_hq import SamHqBackbone

    hq = SamHqBackbone(name="sam_hq_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
                       encoder_global_attn_indexes=[1], allow_random_init=True)
    with pytest.raises(ConfigError, match="not for backbone=sam_hq_tiny"):
        require_sam_v1(hq, "official Open-Vocabulary SAM checkpoints")


def test_sam_hq_tiny_is_sam_tiny_plus_the_hq_parts():
    from sambench.cli.backbone_cost import build_random

    sam, hq = build_random("sam_tiny").state_dict(), build_random("sam_hq_tiny").state_dict()
    assert set(sam) < set(hq) and all(torch.equal(sam[k], hq[k]) for k in sam)
    extra = {k.split(".")[2] for k in set(hq) - set(sam)}
    assert extra == {"hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder", "embedding_maskfeature"}
