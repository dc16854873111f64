"""The saved-activation counter and the memory estimator (sambench/cli/saved_tensors.py,
sambench/cli/memory_estimate.py): hand-computed counts, meta == real CPU, checkpointing checked
against a real (reentrant) checkpointed forward, the block extrapolation, the batch arithmetic."""

from __future__ import annotations

import pytest
import torch
from sambench.testing import TINY_SAM
from torch import nn
from torch.utils.checkpoint import checkpoint

from sambench.cli.memory_estimate import (GIB, USABLE, Estimate, encoder_blocks, encoder_layout, estimate, extrapolate,
                                          linear_counts, proxy_counts, three_block_kwargs)
from sambench.cli.peft_workload import MODES, build_method, synthetic_batch, total_loss
from sambench.cli.saved_tensors import SavedBytes, count_saved

META, CPU = torch.device("meta"), torch.device("cpu")
IMAGE, INSTANCES = 256, 2  # the encoder still runs at 1024² (SAM pads); small masks keep the decoder cheap


def test_linear_relu_saves_its_input_and_output_not_its_weight():
    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    model = nn.Sequential(layer, nn.ReLU())
    for x in (torch.randn(4, 8), torch.randn(4, 8, requires_grad=True)):  # with a grad input the weight is saved too
        counts, out = count_saved(lambda: model(x), module=model)
        # addmm keeps x (for the weight's gradient), relu its output; the weight is a parameter
        assert counts.outside == 4 * 8 * 4 + 4 * 16 * 4
        assert counts.largest == 4 * 16 * 4
        out.sum().backward()


def test_views_of_one_tensor_count_once():
    w = nn.Parameter(torch.ones(6))
    module = nn.Module()
    module.w = w
    x = torch.randn(6)

    def run():
        y = x * w  # saves x (w's gradient needs it; w itself is a parameter)
        z = y.view(2, 3) * y.view(3, 2).t()  # saves two views of y
        return (z * x.view(2, 3)).sum()  # saves a view of x again (z itself is not needed: x needs no grad)

    counts, _ = count_saved(run, module=module)
    assert counts.outside == 6 * 4 * 2  # x and y, each once


def step_counts(device, mode, precision="fp32", blocks=True):
    method, params = build_method(TINY_SAM, mode, device)
    batch = synthetic_batch(1, IMAGE, instances=INSTANCES)
    from sambench.engine.precision import autocast

    with autocast(device, precision):
        counts, _ = count_saved(lambda: total_loss(method, batch), module=method,
                                blocks=encoder_blocks(method) if blocks else ())
    return counts, params, method


@pytest.mark.parametrize("mode", list(MODES))
def test_meta_counts_equal_real_cpu_counts(mode):
    meta, meta_params, _ = step_counts(META, mode)
    real, real_params, _ = step_counts(CPU, mode)
    assert meta == real and meta_params == real_params
    assert real.kept() > 0


def test_dropping_the_graph_while_counting_gives_the_same_counts():
    method, _ = build_method(TINY_SAM, "lora", CPU)
    batch = synthetic_batch(2, IMAGE, instances=INSTANCES)
    for precision in ("fp32", "bf16"):
        from sambench.engine.precision import autocast

        with autocast(CPU, precision):
            kept, _ = count_saved(lambda: total_loss(method, batch), module=method, blocks=encoder_blocks(method))
            dropped, _ = count_saved(lambda: total_loss(method, batch), module=method, blocks=encoder_blocks(method),
                                     keep_graph=False)
        assert kept == dropped and kept.kept() > 0


def test_modes_keep_less_the_less_trains():
    kept = {mode: step_counts(META, mode)[0].kept() for mode in MODES}
    assert kept["full"] > kept["lora"] > kept["frozen"] > 0
    assert step_counts(META, "frozen")[0].blocks == [0, 0]  # the frozen encoder builds no graph


def test_checkpointing_count_equals_a_really_checkpointed_forward():
    """Every block under (reentrant) torch.utils.checkpoint saves only its input: the real count
    equals the estimator's checkpointed count, which is smaller than without checkpointing."""
    counts, _, _ = step_counts(CPU, "full")
    method, _ = build_method(TINY_SAM, "full", CPU)
    for block in encoder_blocks(method):
        block.forward = lambda x, plain=block.forward: checkpoint(plain, x, use_reentrant=True)
    batch = synthetic_batch(1, IMAGE, instances=INSTANCES)
    checkpointed, _ = count_saved(lambda: total_loss(method, batch), module=method)
    assert checkpointed.outside == counts.kept(checkpointing=True) < counts.kept()
    assert counts.recompute() == max(counts.blocks) > 0


def test_bf16_autocast_keeps_less_than_fp32():
    fp32, _, _ = step_counts(CPU, "full")
    bf16, _, _ = step_counts(CPU, "full", "bf16")
    assert 0 < bf16.kept() < fp32.kept()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_three_block_extrapolation_equals_the_full_depth_count(mode):
    deep = dict(TINY_SAM, encoder_depth=6, encoder_global_attn_indexes=[2, 5])
    layout = encoder_layout(deep)
    assert layout["global"] == [False, False, True, False, False, True]
    fixed, per_image, _ = linear_counts(deep, mode, META, image_size=IMAGE)
    small_fixed, small_per_image, _ = linear_counts(three_block_kwargs(deep, layout), mode, META, image_size=IMAGE)
    assert extrapolate(small_per_image, layout) == per_image and extrapolate(small_fixed, layout) == fixed
    assert per_image.kept() > 0
    # the bf16 scheme: blocks from a 3-block encoder with one small mask, the rest from a 1-block encoder
    full_fixed, full_per_image, _ = linear_counts(deep, mode, META)
    assert proxy_counts(deep, layout, mode, META, "fp32") == (full_fixed, full_per_image)


def test_batch_two_costs_twice_the_activations_of_batch_one():
    fixed, per_image, params = linear_counts(TINY_SAM, "full", META, image_size=IMAGE)
    assert fixed.kept() == 0 and per_image.kept() > 0  # fp32: images share nothing saved
    method, _ = build_method(TINY_SAM, "full", META)
    one, _ = count_saved(lambda: total_loss(method, synthetic_batch(1, IMAGE)), module=method,
                         blocks=encoder_blocks(method))
    assert per_image.kept() == one.kept()


def test_estimate_arithmetic():
    params = {"total": 1000, "trainable": 100}
    fixed = SavedBytes(outside=10, blocks=[0, 0], block_inputs=[0, 0], largest=5)
    per_image = SavedBytes(outside=100, blocks=[50, 70], block_inputs=[4, 4], largest=30)
    off, on = estimate(fixed, per_image, params, False), estimate(fixed, per_image, params, True)
    assert off == Estimate(static=4 * 1000 + 12 * 100, fixed=10, per_image=220, transient=60)
    assert on == Estimate(static=5200, fixed=10, per_image=108, transient=60 + 70)
    assert off.at(3) == 5200 + 10 + 3 * 220 + 60
    big = Estimate(static=GIB, fixed=0, per_image=GIB, transient=0)
    assert big.max_batch(16) == int(USABLE * 16) - 1
