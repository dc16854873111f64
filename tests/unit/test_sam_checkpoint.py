"""build_sam_model / load_sam_weights: clear CheckpointError messages for every kind of bad
file, and exact round-trips for good ones. Only tiny models are built (no official weights)."""

from __future__ import annotations

import re

import pytest
import torch

from sambench.backbones.sam_checkpoint import build_sam_model, load_sam_weights
from sambench.errors import CheckpointError, SambenchError

TINY_SIZES = dict(
    encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1]
)


def build_tiny(checkpoint=None, init_seed=0, **overrides):
    sizes = {**TINY_SIZES, **overrides}
    return build_sam_model(
        "tiny",
        None if checkpoint is None else str(checkpoint),
        False,
        sizes["encoder_embed_dim"],
        sizes["encoder_depth"],
        sizes["encoder_num_heads"],
        sizes["encoder_global_attn_indexes"],
        init_seed,
    )


@pytest.fixture(scope="module")
def tiny0():
    return build_tiny(init_seed=0)


@pytest.fixture(scope="module")
def tiny1_state():
    return {k: v.clone() for k, v in build_tiny(init_seed=1).state_dict().items()}


@pytest.fixture(scope="module")
def tiny1_file(tmp_path_factory, tiny1_state):
    path = tmp_path_factory.mktemp("ckpt") / "tiny1.pth"
    torch.save(tiny1_state, path)
    return path


def assert_same_params(model, state):
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in own.items():
        assert torch.equal(value, state[key]), key


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class _NotATensor:
    def __init__(self):
        self.payload = [1, 2, 3]


# ----- official variants without weights --------------------------------------------------------
@pytest.mark.parametrize(
    "variant, filename",
    [("vit_b", "sam_vit_b_01ec64.pth"), ("vit_l", "sam_vit_l_0b3195.pth"), ("vit_h", "sam_vit_h_4b8939.pth")],
)
def test_official_variant_without_checkpoint_names_the_file(variant, filename):
    with pytest.raises(CheckpointError) as info:
        build_sam_model(variant)
    message = str(info.value)
    assert filename in message
    assert "backbone.checkpoint" in message
    assert isinstance(info.value, SambenchError)  # the CLI prints these as one-line errors


def test_unknown_variant():
    with pytest.raises(CheckpointError, match="unknown SAM variant 'vit_x'"):
        build_sam_model("vit_x")


# ----- bad files -----------------------------------------------------------------------------------
def test_missing_file(tmp_path, tiny0):
    path = tmp_path / "nowhere" / "sam_vit_b_01ec64.pth"
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "vit_b")
    message = str(info.value)
    assert "not found" in message and str(path) in message
    assert "sam_vit_b_01ec64.pth" in message


def test_missing_file_through_build(tmp_path):
    path = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="not found"):
        build_tiny(checkpoint=path)


def test_directory_is_not_a_file(tmp_path, tiny0):
    with pytest.raises(CheckpointError, match="not found"):
        load_sam_weights(tiny0, str(tmp_path), "tiny")


def test_empty_file(tmp_path, tiny0):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "vit_h")
    message = str(info.value)
    assert "empty" in message and str(path) in message and "sam_vit_h_4b8939.pth" in message


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a checkpoint at all\n" * 8,
        bytes(range(256)) * 4,
        b"<html><body>404 Not Found</body></html>",  # a failed download saved as the checkpoint
        b"PK\x03\x04" + b"\x00" * 64,  # a broken zip header
    ],
    ids=["text", "binary", "html", "broken_zip"],
)
def test_garbage_bytes(tmp_path, tiny0, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    before = snapshot(tiny0)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "tiny")
    message = str(info.value)
    assert "not a weights file" in message and str(path) in message
    assert "\n" not in message  # one line
    assert_same_params(tiny0, before)


def test_truncated_checkpoint(tmp_path, tiny0, tiny1_file):
    data = tiny1_file.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a weights file"):
        load_sam_weights(tiny0, str(path), "tiny")


@pytest.mark.parametrize(
    "payload",
    [lambda: {"model": _NotATensor()}, lambda: _NotATensor(), lambda: {"weights": torch.zeros(1), "obj": object()}],
    ids=["dict_with_custom_class", "custom_class", "dict_with_object"],
)
def test_pickle_of_python_objects_is_refused(tmp_path, tiny0, payload):
    """weights_only loading refuses arbitrary objects: no code from the file is run."""
    path = tmp_path / "pickled.pth"
    torch.save(payload(), path)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "tiny")
    message = str(info.value)
    assert "not a weights file" in message
    assert str(path) in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "payload",
    [{"epoch": 3, "note": "no tensors"}, [torch.zeros(2)], {"a": torch.zeros(1), "b": 3}, torch.zeros(3)],
    ids=["plain_dict", "list", "mixed_dict", "bare_tensor"],
)
def test_loadable_but_not_a_state_dict(tmp_path, tiny0, payload):
    path = tmp_path / "other.pth"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "tiny")
    assert "no state dict of tensors" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "overrides, what",
    [
        (dict(encoder_embed_dim=48), "other shapes"),
        (dict(encoder_depth=1, encoder_global_attn_indexes=[0]), "missing"),
        (dict(encoder_depth=3, encoder_global_attn_indexes=[2]), "unexpected"),
    ],
    ids=["wider", "shallower", "deeper"],
)
def test_state_dict_of_another_tiny_size_does_not_fit(tmp_path, tiny0, overrides, what):
    other = build_tiny(init_seed=2, **overrides)
    path = tmp_path / "other_size.pth"
    torch.save(other.state_dict(), path)
    before = snapshot(tiny0)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "tiny")
    message = str(info.value)
    assert "does not fit SAM tiny" in message and str(path) in message
    assert "looks like" not in message  # width 48/32 is no official variant
    # the kind of mismatch is reported with a non-zero count
    label = {"missing": r"missing keys", "unexpected": r"unexpected", "other shapes": r"with other shapes"}[what]
    count = re.search(rf"(\d+) {label}", message)
    assert count is not None and int(count.group(1)) > 0, message
    assert_same_params(tiny0, before)  # nothing half-loaded


def test_mismatch_counts_are_reported(tmp_path, tiny0):
    state = tiny0.state_dict()
    state = {k: v for k, v in state.items() if k != "mask_decoder.iou_token.weight"}
    state["extra.weight"] = torch.zeros(1)
    state["image_encoder.neck.0.weight"] = torch.zeros(1)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "tiny")
    message = str(info.value)
    assert "1 missing keys" in message and "mask_decoder.iou_token.weight" in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert "1 with other shapes" in message and "image_encoder.neck.0.weight" in message


@pytest.mark.parametrize("width, guess", [(1024, "vit_l"), (1280, "vit_h"), (768, "vit_b")])
def test_hint_names_the_variant_of_a_big_checkpoint(tmp_path, tiny0, width, guess):
    path = tmp_path / "fake_big.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, width)}, path)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "tiny")
    message = str(info.value)
    assert "does not fit" in message
    assert f"it looks like a SAM {guess} checkpoint" in message


def test_no_hint_when_the_guess_is_the_requested_variant(tmp_path, tiny0):
    """A vit_l-width checkpoint that does not fit a vit_l model gets no 'looks like vit_l'."""
    path = tmp_path / "partial_vit_l.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024)}, path)
    with pytest.raises(CheckpointError) as info:
        load_sam_weights(tiny0, str(path), "vit_l")  # the check runs before any weight is copied
    assert "looks like" not in str(info.value)
    assert "sam_vit_l_0b3195.pth" in str(info.value)


# ----- good files ----------------------------------------------------------------------------------
def test_tiny_round_trip(tiny1_file, tiny1_state):
    fresh = build_tiny(init_seed=0)
    # the two seeds really give different weights, so the load is what makes them equal
    assert not torch.equal(fresh.state_dict()["image_encoder.patch_embed.proj.weight"],
                           tiny1_state["image_encoder.patch_embed.proj.weight"])
    loaded = build_tiny(checkpoint=tiny1_file, init_seed=0)
    assert_same_params(loaded, tiny1_state)
    assert not loaded.training  # eval mode


def test_model_wrapper_is_accepted(tmp_path, tiny1_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": tiny1_state, "epoch": 7}, path)
    loaded = build_tiny(checkpoint=path, init_seed=0)
    assert_same_params(loaded, tiny1_state)


def test_load_into_existing_model(tiny1_file, tiny1_state):
    model = build_tiny(init_seed=3)
    load_sam_weights(model, str(tiny1_file), "tiny")
    assert_same_params(model, tiny1_state)


def test_tiny_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny(init_seed=5)
    after = torch.rand(3)
    b = build_tiny(init_seed=5)
    assert torch.equal(after, expected_next)  # fork_rng: the caller's RNG stream is untouched
    assert_same_params(a, b.state_dict())
