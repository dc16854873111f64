"""The DIT authors' checkpoint layout (what the official train.py writes) <-> sambench's DIT model:
key mapping, round trips, file variants, clear errors, predictions, real ViT-B/H key sets."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sambench.testing import TINY_SAM

from sambench.backbones.sam import SamBackbone
from sambench.backbones.text import SPECIAL_TOKENS, BertTextEncoder
from sambench.errors import CheckpointError, ConfigError
from sambench_plugins.methods.dit.official_checkpoint import (
    export_official_dit, import_official_dit, official_key_map, official_layout, unused_official_tensors,
)
from sambench.registry import METHODS, load_plugins
from sambench.structures import Batch, Sample

load_plugins()
TEXT = {"allow_random_init": True}


def build(name: str = "dit_layerwise", seed: int = 0, width: int = 32, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("text_encoder", TEXT)
    return METHODS.get(name)(sam=SamBackbone(**{**TINY_SAM, "encoder_embed_dim": width, "init_seed": seed}), **kwargs)


def official_dit_state(model, seed: int = 1) -> "OrderedDict[str, torch.Tensor]":
    """A random state dict in the official layout (§1.4 names, this model's shapes), with the
    unused ``query_embeddings`` / ``self_attention.*`` the official Net also saves."""
    generator = torch.Generator().manual_seed(seed)
    state = OrderedDict((key, torch.randn(shape, generator=generator) * 0.05) for key, shape in official_layout(model).items())
    assert set(unused_official_tensors(model.text.dim)) <= set(state)
    return state


def referring_batch() -> Batch:
    rng = np.random.default_rng(0)
    texts = [["the man on the left"], ["red square"]]
    return Batch([Sample(index=i, image=rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), texts=texts[i]) for i in range(2)])


def assert_same_tensors(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ----- mapping and round trips -------------------------------------------------------------------------
def test_key_map_names_every_official_group():
    key_map = official_key_map(build())
    assert key_map["visual_encoder.probs.1.weight"] == "injection.projections.1.weight"
    assert key_map["visual_encoder.blocks.0.attn.rel_pos_h"] == "sam.sam.image_encoder.blocks.0.attn.rel_pos_h"
    assert key_map["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"].startswith("sam.sam.prompt_encoder.")
    assert key_map["mask_decoder.iou_token.weight"] == "sam.sam.mask_decoder.iou_token.weight"
    assert key_map["lang_encoder.bert.embeddings.LayerNorm.weight"] == "text.bert.embeddings.LayerNorm.weight"
    assert key_map["text_proj.bias"] == "text_proj.bias"
    assert len(set(key_map.values())) == len(key_map) == len(build().state_dict())


def test_import_export_import_is_the_identity_on_every_tensor():
    first, second = build(seed=0), build(seed=5)
    state = official_dit_state(first)
    import_official_dit(first, state)
    exported = export_official_dit(first)
    assert set(exported) == {"epoch", "state_dict", "lr"} and exported["epoch"] == 0
    for key, tensor in exported["state_dict"].items():
        assert tensor.dtype == torch.float32
        if not key.startswith(("query_embeddings", "self_attention.")):
            assert torch.equal(tensor, state[key]), key
    assert list(exported["state_dict"]) == list(official_layout(first))
    import_official_dit(second, exported)
    assert_same_tensors(first.state_dict(), second.state_dict())
    assert_same_tensors(export_official_dit(second)["state_dict"], exported["state_dict"])


def test_export_is_a_copy_and_fresh_unused_tensors_have_the_official_shapes():
    model = build()
    state = export_official_dit(model)["state_dict"]
    assert state["query_embeddings"].shape == (1, 4, 32) and state["query_embeddings"].std() < 0.05
    assert state["self_attention.in_proj_weight"].shape == (96, 32) and state["self_attention.out_proj.bias"].shape == (32,)
    state["text_proj.weight"].add_(1.0)
    assert not torch.equal(state["text_proj.weight"], model.text_proj.weight)


@pytest.mark.parametrize("ddp_prefix", [False, True])
@pytest.mark.parametrize("wrapped", [False, True])
def test_prefixed_unprefixed_wrapped_and_bare_files_load(tmp_path, ddp_prefix, wrapped):
    donor, model = build(seed=0), build(seed=3)
    exported = export_official_dit(donor, ddp_prefix=ddp_prefix)
    assert all(key.startswith("module.") == ddp_prefix for key in exported["state_dict"])
    content = exported if wrapped else exported["state_dict"]
    if wrapped:  # train.py also saves Adam's and LambdaLR's states: ignored
        content = {**content, "epoch": 7, "lr": 1e-6, "scheduler": {"lr_lambdas": [None], "last_epoch": 3},
                   "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                                 "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.98), "params": [0]}]}}
    path = tmp_path / "seg_best.pth"
    torch.save(content, path)
    report = import_official_dit(model, str(path))
    assert_same_tensors(model.state_dict(), donor.state_dict())
    assert report.ddp_prefix == ddp_prefix and report.epoch == (7 if wrapped else None)
    assert report.loaded == len(donor.state_dict()) and report.method == "dit_layerwise"
    assert sorted(report.ignored) == sorted(unused_official_tensors(32))
    assert str(path) in report.summary()


def test_a_file_without_the_unused_tensors_also_loads():
    donor = build()
    state = OrderedDict((k, v) for k, v in export_official_dit(donor)["state_dict"].items()
                        if not k.startswith(("query_embeddings", "self_attention.")))
    assert import_official_dit(build(seed=2), state).ignored == []


def test_l_dit_and_e_dit_read_the_same_file():
    state = official_dit_state(build("dit_layerwise"))
    assert import_official_dit(build("dit_e2e"), state).method == "dit_e2e"


# ----- errors -----------------------------------------------------------------------------------------
def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    model = build()
    state = official_dit_state(model)
    del state["visual_encoder.probs.1.bias"]
    state["visual_encoder.probs.7.weight"] = torch.zeros(32, 32)
    state["mask_decoder.iou_token.weight"] = torch.zeros(2, 256)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as error:
        import_official_dit(model, path)
    message = str(error.value)
    assert str(path) in message and "1 missing keys (visual_encoder.probs.1.bias)" in message
    assert "1 unexpected keys (visual_encoder.probs.7.weight)" in message
    assert "mask_decoder.iou_token.weight: file [2, 256] vs model [1, 256]" in message
    assert_same_tensors(model.state_dict(), before)  # nothing half-loaded


def test_many_missing_keys_are_counted_and_a_sam_file_is_recognised():
    model = build()
    sam_file = {f"image_encoder.{k}": v for k, v in model.sam._raw_sam().image_encoder.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing keys \(.*\.\.\. \(\d+ in all\)") as error:
        import_official_dit(model, sam_file)
    assert "backbone.checkpoint" in str(error.value)


def test_not_a_state_dict_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="ckpt="):
        import_official_dit(build(), {"trainable": {"a": 1}, "ema": None})
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        import_official_dit(build(), tmp_path / "absent.pth")


def test_a_checkpoint_for_another_vit_size_names_the_backbone():
    wide = build(width=64)  # the ViT-H case in miniature: a Linear(32, 64) prob_text is in the file
    state = official_dit_state(wide)
    assert state["visual_encoder.prob_text.weight"].shape == (64, 32)
    with pytest.raises(CheckpointError, match="width 64 with 2 blocks, but backbone=sam_tiny has width 32"):
        import_official_dit(build(), state)


def test_a_bert_of_another_size_is_a_clear_error():
    state = official_dit_state(build(text_encoder={**TEXT, "tiny": {"num_hidden_layers": 3}}))
    with pytest.raises(CheckpointError, match="size=bert-base"):
        import_official_dit(build(), state)


def test_the_official_architecture_options_are_checked():
    state = official_dit_state(build())
    with pytest.raises(ConfigError, match=r"method.text_encoder.layer=1 \(this model: 2\)"):
        import_official_dit(build(text_encoder={**TEXT, "layer": 2}), state)
    with pytest.raises(ConfigError, match="method.attention=global"):
        export_official_dit(build(attention="windowed"))
    with pytest.raises(ConfigError, match="method.image_size=512"):
        import_official_dit(build(image_size=256), state)
    with pytest.raises(ConfigError, match="method=dit_layerwise"):
        import_official_dit(build("sam_text"), state)


# ----- behaviour ---------------------------------------------------------------------------------------
def test_an_imported_model_predicts_what_the_donor_predicts(tmp_path):
    donor = build(seed=0)
    import_official_dit(donor, official_dit_state(donor, seed=4))  # non-zero projections: text matters
    path = tmp_path / "donor.pth"
    torch.save(export_official_dit(donor, ddp_prefix=True), path)
    model = build(seed=9, official_checkpoint=str(path), text_encoder={**TEXT, "size": "tiny"}).eval()
    donor.eval()
    batch = referring_batch()
    expected, predicted = donor.predict(batch), model.predict(batch)
    for a, b in zip(expected, predicted):
        assert torch.equal(a.masks, b.masks)
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert (expected[0].logits - build(seed=9).eval().predict(batch)[0].logits).abs().max() > 1e-3


def test_the_method_builds_bert_base_for_a_file_and_needs_a_tokenizer():
    with torch.device("meta"), pytest.raises(ConfigError, match="text_encoder.tokenizer"):
        build(official_checkpoint="unused.pth")


# ----- real sizes, on the meta device (no weights are materialised) ------------------------------------
@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(SPECIAL_TOKENS + ["the", "man", "left", "un", "##aff", "##able"]) + "\n")
    return path


def meta_dit(variant: str, vocab_file) -> torch.nn.Module:
    text = {"allow_random_init": True, "size": "bert-base", "tokenizer": str(vocab_file)}
    with torch.device("meta"):
        return METHODS.get("dit_layerwise")(sam=SamBackbone(name=f"sam_{variant}", variant=variant, allow_random_init=True),
                                            text_encoder=text)


@pytest.mark.parametrize("variant, keys, elements, blocks", [("vit_b", 544, 212_867_376, 12), ("vit_h", 866, 806_589_488, 32)])
def test_real_key_sets_match_the_released_layout(vocab_file, variant, keys, elements, blocks):
    model = meta_dit(variant, vocab_file)
    layout = official_layout(model)
    assert len(layout) == keys and sum(shape.numel() for shape in layout.values()) == elements
    width = 768 if variant == "vit_b" else 1280
    assert layout["query_embeddings"] == (1, 4, 768) and layout["self_attention.in_proj_weight"] == (2304, 768)
    assert layout["visual_encoder.pos_embed"] == (1, 64, 64, width)
    assert layout[f"visual_encoder.probs.{blocks - 1}.weight"] == (width, width)
    assert ("visual_encoder.prob_text.weight" in layout) == (variant == "vit_h")
    assert layout["lang_encoder.bert.embeddings.word_embeddings.weight"] == (30522, 768)
    assert layout["text_proj.weight"] == (256, 768)
    assert sum(key.startswith("lang_encoder.bert.") for key in layout) == 199
    assert len(dict(model.named_buffers(remove_duplicate=True)).keys() & model.state_dict().keys()) == 1  # the PE matrix
    global_blocks = (2, 5, 8, 11) if variant == "vit_b" else (7, 15, 23, 31)
    assert all(layout[f"visual_encoder.blocks.{i}.attn.rel_pos_h"][0] == (127 if i in global_blocks else 27) for i in range(blocks))


def test_a_vit_h_file_on_a_vit_b_backbone_says_which_backbone_to_use(vocab_file):
    vit_h = {key: torch.empty(shape, device="meta") for key, shape in official_layout(meta_dit("vit_h", vocab_file)).items()}
    with pytest.raises(CheckpointError, match="width 1280 with 32 blocks.*use backbone=sam_vit_h"):
        import_official_dit(meta_dit("vit_b", vocab_file), {"state_dict": vit_h})


def test_bert_base_size_tokenises_real_word_pieces_from_a_vocab_file(vocab_file):
    with torch.device("meta"):
        encoder = BertTextEncoder(allow_random_init=True, size="bert-base", tokenizer=str(vocab_file))
    assert encoder.bert.config.num_hidden_layers == 12 and encoder.dim == 768
    ids, mask = encoder.tokenize(["The man unaffable LEFT"])
    words = [encoder.tokenizer.id_to_token(int(i)) for i in ids[0][: int(mask[0].sum())]]
    assert words == ["[CLS]", "the", "man", "un", "##aff", "##able", "left", "[SEP]"]
    with pytest.raises(ConfigError, match="size 'large'"):
        BertTextEncoder(allow_random_init=True, size="large")
