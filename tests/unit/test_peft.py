"""method.peft (sambench/peft): adapters from the peft library on the layers a backbone names,
train / freeze / keep lists, checkpoints with only the trainable tensors, merging.

Expected layer lists and parameter counts are derived in the tests from the upstream modules
(blocks, attention layers, ``nn.Linear`` shapes), not from sambench's regexes."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from sambench import REPO_ROOT
from sambench.cli.build import PEFT_PRESETS, build_backbone, build_method, peft_section, plain
from sambench.cli.build_training import build_trainer
from sambench.errors import CheckpointError, ConfigError
from sambench.logging import RunLogger
from sambench.peft import ADAPTERS, PeftSettings, adapter_layers, apply_peft, merge_adapters
from sambench.peft.apply import settings_for_checkpoint
from sambench.registry import DATASETS, load_plugins
from sambench.structures import collate

load_plugins()


def config(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=["cache.enabled=false", *overrides])


def built(*overrides: str):
    cfg = config(*overrides)
    return build_method(cfg, build_backbone(cfg))


def raw(method):
    """The upstream model inside the method's backbone (for expected layer lists)."""
    return method.sam._modules[method.sam.RAW]


def sample_batch(n: int = 2):
    dataset = DATASETS.get("sample")(split="eval", num_images=n, height=48, width=64)
    return collate([dataset[i] for i in range(n)])


# ----- configuration --------------------------------------------------------------------------
def test_every_preset_is_valid_and_the_shorthand_equals_the_group_choice():
    presets = sorted(p.stem for p in PEFT_PRESETS.glob("*.yaml"))
    assert {"none", "lora", "lora_decoder", "full", "freeze_encoder", "freeze_decoder", "freeze_prompt_encoder"} <= set(presets)
    for name in presets:
        group = plain(config(f"method/peft={name}").method.peft)
        assert peft_section(name) == group  # method.peft=<name> (a string) resolves to the same settings
        PeftSettings.from_dict(group)
    assert peft_section(None) == {} and not PeftSettings.from_dict({}).active


@pytest.mark.parametrize("values, message", [
    ({"adapter": "lora"}, "needs method.peft.targets"),
    ({"adapter": "qlora", "targets": ["x"]}, "unknown method.peft.adapter 'qlora'"),
    ({"rank": 0}, "method.peft.rank=0"),
    ({"dropout": 1.5}, "method.peft.dropout=1.5"),
    ({"freeze": "encoder"}, "expected a list"),
    ({"lora_rank": 4}, "unknown key method.peft.lora_rank"),
])
def test_bad_settings_are_one_clear_error(values, message):
    with pytest.raises(ConfigError, match=message):
        PeftSettings.from_dict(values)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="unknown method.peft preset 'lorra'; presets: .*lora"):
        peft_section("lorra")


def test_a_name_that_selects_nothing_names_the_choices():
    with pytest.raises(ConfigError, match=r"method.peft.targets: 'encoder_atention' matches no module.*encoder_attention"):
        built("method/peft=lora", "method.peft.targets=[encoder_atention]")
    with pytest.raises(ConfigError, match=r"method.peft.freeze: 'sam\\.nothing\\..\*' matches no parameter"):
        built(r"method.peft.freeze=[sam\.nothing\..*]")


def test_training_free_methods_refuse_peft():
    with pytest.raises(ConfigError, match="training-free method"):
        built("method=persam", "method/peft=lora")


# ----- structure ------------------------------------------------------------------------------
def test_lora_on_the_encoder_attention_of_sam():
    method = built("method.finetune=none")  # zero-shot: nothing of its own trains
    assert not method.trainable_parameters()
    encoder = raw(method).image_encoder
    linears = {f"sam.sam.image_encoder.blocks.{i}.attn.{name}": getattr(block.attn, name)
               for i, block in enumerate(encoder.blocks) for name in ("qkv", "proj")}
    summary = apply_peft(method, PeftSettings.from_dict(peft_section("lora")))
    rank = 8
    expected = {}
    for name, layer in linears.items():
        expected[f"{name}.lora_A.default.weight"] = (rank, layer.in_features)
        expected[f"{name}.lora_B.default.weight"] = (layer.out_features, rank)
    trainable = method.trainable_parameters()
    assert {n: tuple(p.shape) for n, p in trainable.items()} == expected
    assert summary["adapter_params"] == summary["trainable_params"] == sum(a * b for a, b in expected.values())
    assert summary["adapted_layers"] == len(linears) == 2 * len(encoder.blocks)
    assert summary["total_params"] == sum(p.numel() for p in built().parameters())
    assert method.peft_settings["adapter"] == "lora" and "merge" not in method.peft_settings


def test_lora_keeps_what_the_method_trains_and_freezes_the_adapted_weights():
    method = built("method/peft=lora")  # sam_prompted fine-tunes the mask decoder
    trainable = method.trainable_parameters()
    decoder = {f"sam.sam.mask_decoder.{n}" for n, p in raw(built()).mask_decoder.named_parameters() if p.requires_grad}
    assert decoder and decoder <= set(trainable)
    assert not [n for n in trainable if not n.startswith("sam.sam.mask_decoder.") and ".lora_" not in n]
    assert all(not p.requires_grad for n, p in method.named_parameters() if ".base_layer." in n)


@pytest.mark.parametrize("backbone", ["sam2_tiny", "sam_hq_tiny"])
def test_targets_on_other_backbones(backbone):
    method = built(f"backbone={backbone}", "method/peft=lora", "method.peft.targets=[encoder_attention,decoder_attention]")
    model = raw(method)
    blocks = model.image_encoder.trunk.blocks if backbone == "sam2_tiny" else model.image_encoder.blocks
    decoder = model.sam_mask_decoder if backbone == "sam2_tiny" else model.mask_decoder
    decoder_attention = 4 * (3 * len(decoder.transformer.layers) + 1)  # q/k/v/out of 3 attentions per layer + the final one
    assert len(adapter_layers(method)) == 2 * len(blocks) + decoder_attention
    assert not any(p.requires_grad for n, p in method.named_parameters() if ".image_encoder." in n and "lora_" not in n)


def test_train_freeze_and_keep():
    method = built("method/peft=full")  # the encoder trains too, the rest as sam_prompted decides (its decoder)
    model, plain_method = raw(method), built()
    encoder = {f"sam.sam.image_encoder.{n}" for n, _ in model.image_encoder.named_parameters()}
    assert set(method.trainable_parameters()) == encoder | set(plain_method.trainable_parameters())
    method = built("method/peft=full", "method.peft.train=[encoder,prompt_encoder]")
    assert {f"sam.sam.prompt_encoder.{n}" for n, _ in model.prompt_encoder.named_parameters()} <= set(method.trainable_parameters())
    method = built("method/peft=freeze_decoder", r"method.peft.keep=[.*output_hypernetworks_mlps\.0\..*]")
    assert set(method.trainable_parameters()) == {
        f"sam.sam.mask_decoder.{n}" for n, _ in raw(method).mask_decoder.named_parameters() if n.startswith("output_hypernetworks_mlps.0.")}


def test_dit_adds_the_text_encoder_and_its_attention():
    method = built("method=dit_layerwise", "method/peft=lora", "method.peft.targets=[text_attention]",
                   "method.peft.freeze=[text_encoder,encoder]")
    bert = method.text.bert
    used = bert.encoder.layer[: method.text.layer]
    assert len(adapter_layers(method)) == 4 * len(used)  # query, key, value, output.dense of each used block
    assert not [n for n, p in method.named_parameters() if p.requires_grad and n.startswith("text.") and "lora_" not in n]


# ----- predictions, merging -------------------------------------------------------------------
def randomize_adapters(method, seed: int = 0) -> None:
    """Adapters start as the identity (LoRA's B = 0): give them values so merging matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(method):
            for name, param in layer.named_parameters():
                if not name.startswith("base_layer."):
                    param.add_(0.05 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("adapter", list(ADAPTERS))
def test_merged_predictions_equal_unmerged(adapter):
    method = built("method/peft=lora", f"method.peft.adapter={adapter}",
                   "method.peft.targets=[encoder_attention,decoder_attention]").eval()
    randomize_adapters(method)
    batch = sample_batch()
    plain_keys = set(built().state_dict())
    before = method.predict(batch)
    logits_before = _logits(method, batch)
    layers = len(adapter_layers(method))
    assert layers and merge_adapters(method) == layers
    assert not adapter_layers(method) and set(method.state_dict()) == plain_keys
    after = method.predict(batch)
    torch.testing.assert_close(_logits(method, batch), logits_before, atol=1e-4, rtol=1e-4)
    for a, b in zip(before, after):
        assert (a.masks != b.masks).float().mean() < 1e-3


def _logits(method, batch) -> torch.Tensor:
    with torch.no_grad():
        features = method.sam.embed_images([s.image for s in batch])
        return torch.cat([method._masks_for(s, f)[0].flatten() for s, f in zip(batch, features)])


def test_merging_changes_the_weights_by_the_adapter_update():
    """LoRA merged: W' = W + (alpha / r) B A, computed here from the tensors."""
    method = built("method/peft=lora", "method.finetune=none")
    randomize_adapters(method)
    layer = adapter_layers(method)[0]
    weight, a, b = (layer.base_layer.weight.detach().clone(), layer.lora_A["default"].weight.detach(),
                    layer.lora_B["default"].weight.detach())
    parent = raw(method).image_encoder.blocks[0].attn
    merge_adapters(method)
    assert isinstance(parent.qkv, nn.Linear) and not adapter_layers(method)
    torch.testing.assert_close(parent.qkv.weight, weight + (16.0 / 8) * b @ a)


# ----- training -------------------------------------------------------------------------------
def test_training_changes_only_the_adapters_and_resumes(tmp_path):
    """Everything frozen but the LoRA tensors: two steps change them and nothing else; the
    checkpoint holds exactly them and records the settings; a resume with other settings fails."""
    torch.manual_seed(0)
    method = built("method/peft=lora", r"method.peft.freeze=[.*]", "method.peft.targets=[encoder_attention,decoder_attention]")
    before = {n: t.clone() for n, t in method.state_dict().items()}
    train_set = DATASETS.get("sample")(split="train", num_images=4, height=48, width=64)
    trainer = build_trainer(method=method, train_set=train_set, eval_set=None, evaluator=None, run_dir=tmp_path,
                            device=torch.device("cpu"), run_logger=RunLogger(), max_steps=2, batch_size=2,
                            optim={"lr": 1e-2})
    trainer.fit()
    changed = {n for n, t in method.state_dict().items() if not torch.equal(t, before[n])}
    lora = {n for n in before if ".lora_" in n}
    assert changed and changed <= lora
    assert {n for n in changed if ".lora_B." in n}  # B starts at zero and moves
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["trainable"]) == lora and state["meta"]["peft"] == method.peft_settings
    other = built("method/peft=lora", r"method.peft.freeze=[.*]", "method.peft.rank=4",
                  "method.peft.targets=[encoder_attention,decoder_attention]")
    again = build_trainer(method=other, train_set=train_set, eval_set=None, evaluator=None, run_dir=tmp_path,
                          device=torch.device("cpu"), run_logger=RunLogger(), max_steps=3, batch_size=2)
    with pytest.raises(CheckpointError, match="trained with method.peft=.*'rank': 8.*this run has.*'rank': 4"):
        again.fit()


def test_evaluation_takes_the_checkpoints_settings():
    lora = PeftSettings.from_dict(peft_section("lora"))
    none = PeftSettings.from_dict({"merge": False})
    adopted = settings_for_checkpoint(none, lora.structure(), "last.pt")
    assert adopted.structure() == lora.structure() and adopted.merge is False
    assert settings_for_checkpoint(lora, lora.structure(), "last.pt") == lora
    with pytest.raises(ConfigError, match="was trained with method.peft="):
        settings_for_checkpoint(PeftSettings.from_dict({**peft_section("lora"), "rank": 4}), lora.structure(), "x")
    with pytest.raises(ConfigError, match="trained without method.peft"):
        settings_for_checkpoint(lora, None, "last.pt")


def test_lora_trains_under_bf16_autocast(tmp_path):
    """trainer.precision=bf16 with LoRA on the encoder: finite losses, fp32 adapter tensors that move."""
    torch.manual_seed(0)
    method = built("method/peft=lora", "method.finetune=none")
    train_set = DATASETS.get("sample")(split="train", num_images=2, height=48, width=64)
    trainer = build_trainer(method=method, train_set=train_set, eval_set=None, evaluator=None, run_dir=tmp_path,
                            device=torch.device("cpu"), run_logger=RunLogger(), max_steps=2, batch_size=2,
                            precision="bf16", optim={"lr": 1e-2})
    b_before = {n: p.detach().clone() for n, p in method.trainable_parameters().items() if ".lora_B." in n}
    trainer.fit()
    params = method.trainable_parameters()
    assert all(p.dtype == torch.float32 for p in params.values())
    assert any(not torch.equal(params[n], b) for n, b in b_before.items())


def test_lora_gradients_are_the_same_under_activation_checkpointing():
    """LoRA on the encoder + trainer.activation_checkpointing: the encoder blocks re-run in backward
    and the adapter gradients equal those of the plain run."""
    grads = []
    for checkpointing in (False, True):
        method = built("method/peft=lora", "method.finetune=none")
        randomize_adapters(method)
        method.sam.set_activation_checkpointing(checkpointing)
        method.train()
        loss = sum(method.training_step(sample_batch()).values())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in method.trainable_parameters().items()})
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_adapters_start_the_same_and_leave_the_random_stream_alone():
    """Every rank and every run builds the same LoRA A; the run's global random stream (data
    augmentation, dropout) is the one it would be without adapters."""
    torch.manual_seed(7)
    first = built("method/peft=lora")
    after_lora = torch.rand(3)
    torch.manual_seed(7)
    built()
    assert torch.equal(torch.rand(3), after_lora)
    torch.manual_seed(123)
    second = built("method/peft=lora")
    a, b = first.trainable_parameters(), second.trainable_parameters()
    assert all(torch.equal(a[n], b[n]) for n in a if ".lora_" in n)
