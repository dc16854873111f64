"""The backbone interface: methods never reach the raw SAM modules, the raw module is private,
checkpoint keys are unchanged, capabilities are checked at compose time, and the new members
(``image_pe``, ``no_mask_embedding``, ``encode_frame_prompts``, ``set_trainable``, ...) equal the
upstream computations they replace."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from sambench import CONFIG_DIR, REPO_ROOT
from sambench.backbones.interface import (CAPABILITIES, HIGH_RES_FEATURES, TOKEN_INJECTION, ImageFeatures,
                                          SegmentationBackbone, check_capabilities)
from sambench.backbones.sam import SamBackbone
from sambench.backbones.sam_checkpoint import build_sam_model
from sambench.backbones.sam_extensions import run_image_encoder
from sambench.cli.build import check_config
from sambench.errors import ConfigError
from sambench.method import SambenchMethod
from sambench.registry import METHODS, load_plugins
from sambench.structures import Sample, collate

TINY = dict(name="sam_tiny", variant="tiny", encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
            encoder_global_attn_indexes=[1], allow_random_init=True)

# ----- no method touches the raw SAM ------------------------------------------------------------
#: where method code lives: the method packages, scanned recursively
METHOD_CODE = ("methods",)
#: attributes of the upstream modules (or private ways to them) a method must not name
RAW_ATTRIBUTES = {
    "_raw_sam", "_modules", "image_encoder", "prompt_encoder", "mask_decoder", "no_mask_embed", "pe_layer",
    "get_dense_pe", "postprocess_masks", "iou_prediction_head", "iou_token", "mask_tokens", "output_hypernetworks_mlps",
    "input_image_size", "transformer_dim", "pixel_mean", "pixel_std", "image_embedding_size",
}
#: attributes of the backbone that are its internals (``backbone.sam`` is the raw model)
BACKBONE_INTERNALS = {"sam", "transform", "requires_grad_"}
RAW_MODULES = ("sambench.backbones.sam_extensions", "sambench.backbones.sam_checkpoint", "segment_anything.build_sam")
RAW_FUNCTIONS = {"run_image_encoder", "run_mask_decoder", "run_single_mask_decoder", "build_sam_model", "sam_model_registry"}


def raw_sam_uses(source: str) -> list[str]:
    """Lines of ``source`` that reach SAM's raw modules instead of the backbone interface."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute):
            if node.attr in RAW_ATTRIBUTES:
                found.append(f"{line}: .{node.attr}")
            # ``<x>.sam.sam`` / ``<x>.sam.transform`` / ``sam.requires_grad_``: the backbone's own internals
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if owner_name == "sam" and node.attr in BACKBONE_INTERNALS:
                found.append(f"{line}: sam.{node.attr}")
        elif isinstance(node, ast.Constant) and node.value in RAW_ATTRIBUTES:  # getattr(x, "mask_decoder")
            found.append(f"{line}: '{node.value}'")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(RAW_MODULES):
            found.append(f"{line}: from {node.module}")
        elif isinstance(node, ast.Import) and any(a.name.startswith(RAW_MODULES) for a in node.names):
            found.append(f"{line}: import")
        elif isinstance(node, ast.Name) and node.id in RAW_FUNCTIONS:
            found.append(f"{line}: {node.id}")
    return found


def method_files() -> list[Path]:
    files = [f for folder in METHOD_CODE for f in sorted((REPO_ROOT / folder).rglob("*.py"))]
    assert len(files) > 20, "the method folders moved: update METHOD_CODE"
    return files


def method_raw_uses(path: Path) -> list[str]:
    """Raw uses in a method file; an official-checkpoint key map may name raw state-dict keys
    in strings (``'iou_token'``): the authors' files are keyed by them."""
    uses = raw_sam_uses(path.read_text())
    if path.name == "official_checkpoint.py":
        uses = [use for use in uses if not use.split(": ", 1)[1].startswith("'")]
    return uses


def test_no_method_file_touches_raw_sam_modules():
    offenders = {str(f.relative_to(REPO_ROOT)): uses for f in method_files() if (uses := method_raw_uses(f))}
    assert not offenders, f"methods must use the backbone interface (sambench/backbones/interface.py): {offenders}"


@pytest.mark.parametrize("planted", [
    "x = self.sam.sam.image_encoder(pixels)",
    "dense = self.sam.prompt_encoder.no_mask_embed.weight",
    "pe = encoder.pe_layer((32, 32))",
    "pe = sam.get_dense_pe()",
    "from sambench.backbones.sam_extensions import run_mask_decoder",
    "low, _ = run_single_mask_decoder(decoder, token, emb, pe, s, d)",
    "boxes = self.sam.transform.apply_boxes_torch(b, size)",
    "self.sam = sam.requires_grad_(False)",
    "raw = self.sam._raw_sam()",
    "decoder = getattr(self.sam, 'mask_decoder')",
    "dim = sam.mask_decoder.transformer_dim",
    "self.sam.mask_decoder.iou_prediction_head.requires_grad_(False)",
])
def test_the_scan_catches_raw_access(planted):
    clean = "sparse, dense = self.sam.encode_frame_prompts(boxes=boxes)\nself.sam.set_trainable(mask_decoder=True)\n"
    assert raw_sam_uses(clean) == []
    assert raw_sam_uses(clean + planted)


# ----- the raw module is private; checkpoint keys unchanged --------------------------------------
@pytest.fixture(scope="module")
def backbone() -> SamBackbone:
    return SamBackbone(**TINY, cache_dir=None)


def test_raw_module_is_not_reachable_as_an_attribute(backbone):
    assert isinstance(backbone, SegmentationBackbone)
    with pytest.raises(AttributeError, match="interface"):
        backbone.sam
    assert not hasattr(backbone, "sam")
    with pytest.raises(AttributeError, match="private"):
        backbone.sam = torch.nn.Linear(1, 1)
    assert type(backbone._raw_sam()).__name__ == "Sam"


def test_state_dict_keys_are_the_upstream_keys_prefixed_by_sam(backbone):
    upstream = build_sam_model("tiny", None, True, 32, 2, 2, [1], 0)
    assert list(backbone.state_dict()) == [f"sam.{key}" for key in upstream.state_dict()]
    assert [n for n, _ in backbone.named_parameters()] == [f"sam.{n}" for n, _ in upstream.named_parameters()]

    class Holder(torch.nn.Module):  # a method stores the backbone as ``self.sam``
        def __init__(self, sam):
            super().__init__()
            self.sam = sam

    assert all(key.startswith("sam.sam.") for key in Holder(backbone).state_dict())


def test_load_state_dict_and_to_reach_the_raw_module(backbone):
    other = SamBackbone(**{**TINY, "init_seed": 1}, cache_dir=None)
    key = "sam.mask_decoder.iou_token.weight"
    assert not torch.equal(other.state_dict()[key], backbone.state_dict()[key])
    other.load_state_dict(backbone.state_dict())
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in other.state_dict().items())
    other.to(torch.float64)
    assert other._raw_sam().mask_decoder.iou_token.weight.dtype == torch.float64
    assert other._raw_sam().pixel_mean.dtype == torch.float64


# ----- members that replace raw access ----------------------------------------------------------
def test_image_pe_equals_the_upstream_pe_layer(backbone):
    prompt_encoder = backbone._raw_sam().prompt_encoder
    assert torch.equal(backbone.image_pe((32, 32)), prompt_encoder.pe_layer((32, 32)).unsqueeze(0))
    assert backbone.image_pe((32, 32)).shape == (1, 256, 32, 32)
    assert torch.equal(backbone.image_pe((64, 64)), prompt_encoder.get_dense_pe())


def test_no_mask_embedding_shape_and_value(backbone):
    weight = backbone._raw_sam().prompt_encoder.no_mask_embed.weight  # 1×256
    dense = backbone.no_mask_embedding(3, (32, 20))
    assert dense.shape == (3, 256, 32, 20)
    assert torch.equal(dense[2, :, 31, 19], weight[0]) and torch.equal(dense[0, :, 0, 0], weight[0])
    _, upstream = backbone._raw_sam().prompt_encoder(points=None, boxes=torch.zeros(2, 4), masks=None)
    assert torch.equal(backbone.no_mask_embedding(2, (64, 64)), upstream)


def test_frame_prompts_equal_the_upstream_prompt_encoder(backbone):
    points, labels = torch.tensor([[[10.0, 20.0], [300.0, 40.0]]]), torch.tensor([[1, 0]])
    boxes = torch.tensor([[10.0, 20.0, 300.0, 400.0]])
    raw = backbone._raw_sam().prompt_encoder
    for ours, ref in ((backbone.encode_frame_prompts(points=points, point_labels=labels),
                       raw(points=(points, labels), boxes=None, masks=None)),
                      (backbone.encode_frame_prompts(boxes=boxes), raw(points=None, boxes=boxes, masks=None))):
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    assert torch.equal(backbone.scale_boxes(boxes, (600, 800)), backbone.transform.apply_boxes_torch(boxes, (600, 800)))


def test_encode_features_at_a_smaller_input_size(backbone):
    pixels = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = backbone.encode_features(pixels)
        expected = run_image_encoder(backbone._raw_sam().image_encoder, pixels)
    assert isinstance(features, ImageFeatures) and features.levels == {}
    assert features.embedding.shape == (1, 256, 32, 32) and torch.equal(features.embedding, expected)


def test_decode_takes_image_features_or_the_embedding(backbone):
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    sparse, dense = backbone.encode_frame_prompts(boxes=torch.tensor([[10.0, 20.0, 300.0, 400.0]]))
    with torch.no_grad():
        a = backbone.decode(embedding, sparse, dense)
        b = backbone.decode(ImageFeatures(embedding), sparse, dense)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----- ImageFeatures on the cached path -----------------------------------------------------------
def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)]


def test_embed_images_returns_features_equal_to_the_tensor_path(backbone):
    images = _images()
    features = backbone.embed_images(images)
    assert isinstance(features, ImageFeatures) and features.levels == {} and len(features) == 2
    assert features.embedding.shape == (2, 256, 64, 64) and features.embedding.dtype == torch.float32
    with torch.no_grad():
        for i, image in enumerate(images):
            assert torch.equal(features.embedding[i], backbone.encode(backbone.preprocess(image))[0])


def test_cached_second_call_returns_equal_features(tmp_path):
    sam = SamBackbone(**TINY, cache_dir=str(tmp_path))
    first, second = sam.embed_images(_images()), sam.embed_images(_images())
    assert (sam.cache.hits, sam.cache.misses) == (2, 2)
    assert isinstance(second, ImageFeatures) and second.levels == {}
    assert torch.equal(second.embedding, first.embedding)


def test_indexing_gives_one_image_with_a_batch_dim_of_one():
    embedding = torch.randn(3, 4, 2, 2)
    levels = {"stride4": torch.randn(3, 2, 8, 8), "early": torch.randn(3, 5, 4, 4)}
    features = ImageFeatures(embedding, levels)
    assert len(features) == 3
    for i in (0, 1, 2, -1):
        one = features[i]
        k = i % 3
        assert isinstance(one, ImageFeatures) and len(one) == 1
        assert one.embedding.shape == (1, 4, 2, 2) and torch.equal(one.embedding, embedding[k:k + 1])
        assert set(one.levels) == set(levels)
        assert all(one.levels[name].shape == (1, *level.shape[1:]) and torch.equal(one.levels[name], level[k:k + 1])
                   for name, level in levels.items())
    for out_of_range in (3, -4):
        with pytest.raises(IndexError):
            features[out_of_range]
    assert [torch.equal(f.embedding, embedding[k:k + 1]) for k, f in enumerate(features)] == [True] * 3
    moved = features.to("cpu")
    assert torch.equal(moved.embedding, embedding) and torch.equal(moved.levels["early"], levels["early"])


class LevelCarryingBackbone(SamBackbone):
    """Stands in for SAM 2.1 / HQ-SAM: ``embed_images`` adds a feature level (image k's is all k),
    ``decode`` records the level it receives, then decodes as SAM v1."""

    LEVEL = "high_res"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.received: list[torch.Tensor | None] = []

    def embed_images(self, images):
        features = super().embed_images(images)
        level = torch.arange(len(images), dtype=torch.float32).reshape(-1, 1, 1, 1).expand(-1, 8, 16, 16)
        return ImageFeatures(features.embedding, {self.LEVEL: level.contiguous()})

    def decode(self, embedding, sparse, dense, multimask_output=False, transformer_fn=None):
        self.received.append(embedding.levels.get(self.LEVEL) if isinstance(embedding, ImageFeatures) else None)
        return super().decode(embedding, sparse, dense, multimask_output, transformer_fn)


def test_an_extra_level_reaches_decode_through_an_unchanged_method():
    """The property SAM 2.1 / HQ-SAM need: a method hands each image's features to ``predict``
    whole, so a level it never names reaches the backbone's decoder, sliced to that image."""
    load_plugins()
    masks = torch.zeros(2, 48, 64, dtype=torch.bool)
    masks[0, 5:20, 10:30], masks[1, 25:45, 30:60] = True, True
    other = torch.zeros(1, 64, 40, dtype=torch.bool)
    other[0, 10:50, 5:35] = True
    images = _images()
    batch = collate([Sample(index=0, image=images[0], masks=masks), Sample(index=1, image=images[1], masks=other)])
    carrying = LevelCarryingBackbone(**TINY, cache_dir=None)
    method = METHODS.get("sam_prompted")(sam=carrying, prompt="box", finetune="none")
    with torch.no_grad():
        predictions = method.predict(batch)
    assert len(carrying.received) == 2
    for k, level in enumerate(carrying.received):
        assert level is not None and level.shape == (1, 8, 16, 16) and bool((level == k).all())
    with torch.no_grad():
        reference = METHODS.get("sam_prompted")(sam=SamBackbone(**TINY, cache_dir=None), prompt="box",
                                                finetune="none").predict(batch)
    for ours, ref in zip(predictions, reference):  # the level changes nothing else
        assert torch.equal(ours.masks, ref.masks) and torch.equal(ours.scores, ref.scores)


def test_encoder_spec_describes_the_vit(backbone):
    spec, encoder = backbone.encoder_spec(), backbone._raw_sam().image_encoder
    assert (spec.width, spec.depth, spec.num_heads, spec.grid) == (32, 2, 2, 64)
    assert backbone.encoder_pos_embed() is encoder.pos_embed
    assert backbone.embed_dim == 256 == backbone._raw_sam().mask_decoder.transformer_dim
    assert backbone.mask_threshold == 0.0 and backbone.image_size == 1024


def _trainable(backbone) -> set[str]:
    return {name for name, p in backbone.named_parameters() if p.requires_grad}


def test_set_trainable_flags():
    sam = SamBackbone(**TINY, cache_dir=None)
    names = [name for name, _ in sam.named_parameters()]
    part = lambda prefix: {n for n in names if n.startswith(prefix)}  # noqa: E731
    encoder, prompt, decoder = part("sam.image_encoder."), part("sam.prompt_encoder."), part("sam.mask_decoder.")
    iou_head, no_mask = part("sam.mask_decoder.iou_prediction_head."), part("sam.prompt_encoder.no_mask_embed.")
    assert encoder and prompt and decoder and iou_head and no_mask
    sam.set_trainable(image_encoder=True, mask_decoder=True)
    sam.set_trainable()
    assert _trainable(sam) == set()
    sam.set_trainable(mask_decoder=True)
    assert _trainable(sam) == decoder
    sam.set_trainable(mask_decoder=True, iou_head=False, no_mask_embed=True, image_encoder=True)
    assert _trainable(sam) == (decoder - iou_head) | no_mask | encoder
    sam.set_trainable(prompt_encoder=True, no_mask_embed=False)
    assert _trainable(sam) == prompt - no_mask
    sam.set_trainable(mask_decoder=True, output_token_only=True)
    unused = part("sam.mask_decoder.iou_token.") | iou_head | {
        n for n in part("sam.mask_decoder.output_hypernetworks_mlps.") if not n.startswith("sam.mask_decoder.output_hypernetworks_mlps.0.")}
    assert len(unused) > len(iou_head) and _trainable(sam) == decoder - unused


# ----- capabilities -----------------------------------------------------------------------------
def test_sam_v1_capabilities():
    assert SamBackbone.CAPABILITIES <= CAPABILITIES
    assert TOKEN_INJECTION in SamBackbone.CAPABILITIES and HIGH_RES_FEATURES not in SamBackbone.CAPABILITIES


def test_every_registered_method_fits_sam_v1():
    load_plugins()
    promptable = {name: cls for name, cls in METHODS.module_dict.items() if cls.BACKBONE_KIND == "promptable"}
    assert set(METHODS.module_dict) - set(promptable) == {"sam3"}  # SAM 3 runs on its own model
    for name, cls in promptable.items():
        assert issubclass(cls, SambenchMethod)
        assert set(cls.REQUIRES) <= CAPABILITIES, name
        check_capabilities(name, cls, "sam_tiny", SamBackbone.capabilities_for("tiny"))
    assert TOKEN_INJECTION in METHODS.get("dit_e2e").REQUIRES


def test_backbone_kinds_are_checked_both_ways():
    from sambench.backbones.sam3 import Sam3ConceptModel
    load_plugins()
    with pytest.raises(ConfigError, match="method 'persam' runs on a promptable SAM backbone.*backbone 'sam3_tiny' is a "
                                          "concept model.*backbones that fit: sam_tiny"):
        check_capabilities("persam", METHODS.get("persam"), "sam3_tiny", Sam3ConceptModel.CAPABILITIES,
                           fitting=["sam_tiny"], kind=Sam3ConceptModel.KIND)
    with pytest.raises(ConfigError, match="method 'sam3' runs on a concept model.*backbone 'sam_tiny' is a promptable"):
        check_capabilities("sam3", METHODS.get("sam3"), "sam_tiny", SamBackbone.capabilities_for("tiny"), kind=SamBackbone.KIND)
    check_capabilities("sam3", METHODS.get("sam3"), "sam3_tiny", Sam3ConceptModel.CAPABILITIES, kind="concept")


def test_missing_capability_is_a_compose_time_error_naming_everything():
    class NeedsHighRes(SambenchMethod):
        REQUIRES = frozenset({HIGH_RES_FEATURES})

    with pytest.raises(ConfigError) as error:
        check_capabilities("sam2_thing", NeedsHighRes, "sam_vit_b", SamBackbone.CAPABILITIES, fitting=["a", "b"])
    message = str(error.value)
    assert "method 'sam2_thing'" in message and "backbone 'sam_vit_b'" in message and "high_res_features" in message
    assert "backbones that fit: a, b" in message

    class Typo(SambenchMethod):
        REQUIRES = frozenset({"token_injektion"})

    with pytest.raises(ConfigError, match="unknown backbone capabilities"):
        check_capabilities("typo", Typo, "sam_vit_b", SamBackbone.CAPABILITIES)


def test_check_config_checks_capabilities(monkeypatch):
    load_plugins()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["method=dit_layerwise"])
    check_config(cfg)  # SAM v1 has what DIT needs
    monkeypatch.setattr(METHODS.get("dit_layerwise"), "REQUIRES", frozenset({TOKEN_INJECTION, HIGH_RES_FEATURES}))
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    assert f"backbone '{cfg.backbone.name}'" in str(error.value) and "'dit_layerwise'" in str(error.value)
    assert "high_res_features" in str(error.value)
