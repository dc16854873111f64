"""tools/count_flops.py: the measured inference cost of OV-SAM and the baselines at the paper's
sizes (SAM ViT-H, CLIP RN50x16, 1024², 10 box prompts), on the meta device."""

from __future__ import annotations

import pytest

import torch
from sambench.testing import run_tool

from sambench.backbones.sam import SamBackbone
from sambench.cli.flops import PAPER, count, measure


def test_sam_vit_h_encoder_count_matches_the_reference():
    with torch.device("meta"), torch.no_grad():
        sam = SamBackbone(name="sam", variant="vit_h", allow_random_init=True)
        flops = count(lambda: sam.encode(torch.zeros(1, 3, 1024, 1024)))
    assert abs(flops / 1e9 - 5961) < 5  # spec: 5,961 GFLOPs (2 per MAC) = 2,981 GMACs


@pytest.mark.slow
def test_measured_cost_is_the_papers_table_1():
    results = measure(prompts=10)
    for name, (paper_gmacs, paper_params) in PAPER.items():
        assert abs(results[name]["params_m"] - paper_params) < 1.0, name
        assert abs(results[name]["gmacs"] - paper_gmacs) / paper_gmacs < 0.02, (name, results[name])
        assert results[name]["gflops"] == 2 * results[name]["gmacs"]
    assert results["ovsam"]["gmacs"] < results["feature_crop"]["gmacs"] / 2.9
    assert measure(prompts=1)["image_crop"]["gmacs"] < results["image_crop"]["gmacs"]  # one CLIP crop per prompt


@pytest.mark.slow
def test_the_tool_prints_the_table(tmp_path):
    result = run_tool("tools/count_flops.py", "--prompts", "2", "--json", str(tmp_path / "flops.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| ovsam |" in result.stdout and "| feature_crop |" in result.stdout
    assert (tmp_path / "flops.json").read_text().count("gmacs") == 3


def test_backbone_table_measures_a_built_backbone():
    from sambench.cli.backbone_cost import backbone_table, build_random, measure_backbone

    result = measure_backbone("sam_tiny", image_hw=(60, 80))
    reference = build_random("sam_tiny")
    assert result["params_m"] == sum(p.numel() for p in reference.parameters()) / 1e6
    assert result["gmacs"] > 1 and result["warm_ms"] < result["cold_ms"]  # the warm round is a cache read
    row = backbone_table({"sam_tiny": result}).splitlines()[2]
    assert row.startswith("| sam_tiny | ") and f"{result['params_m']:,.1f}" in row


def test_backbone_table_refuses_sam3_with_a_reason():
    from sambench.cli.backbone_cost import measure_backbone
    from sambench.errors import ConfigError

    with pytest.raises(ConfigError, match="backbone 'sam3_tiny' is a concept model .*, not a promptable SAM backbone"):
        measure_backbone("sam3_tiny")
