"""Building SAM 3's image model (``sam3`` package) without the hub.

``variant="sam3"`` calls the package's own ``build_sam3_image_model`` with no checkpoint and
``load_from_HF=False`` (~840 M parameters, 1008² input); the weights are then loaded strictly by
:func:`load_sam3_weights`. ``variant="tiny"`` composes the same package modules at small widths
(tests and quick runs): a 2-block ViT, a 2-layer text encoder, one fusion-encoder and
one decoder layer, 252² input (an 18×18 patch grid).

The package is imported here, when a model is built, never at import of sambench.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sambench.errors import ConfigError

#: the full model's input side (the processor's ``resolution``) and the tiny preset's
RESOLUTION = {"sam3": 1008, "tiny": 252}
#: prefix of the image model's tensors in the released ``sam3.pt`` (the video tracker's: ``tracker.``)
DETECTOR_PREFIX = "detector."


def default_bpe_path() -> str:
    """The CLIP BPE vocabulary SAM 3's tokenizer reads: the ``sam3`` wheel does not ship its
    ``assets/bpe_simple_vocab_16e6.txt.gz``; open_clip ships the same file (CLIP's vocabulary)."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError("SAM 3's tokenizer needs bpe_simple_vocab_16e6.txt.gz (CLIP's BPE vocabulary): install "
                          "open_clip_torch or set backbone.bpe_path=<file> (the file is in the sam3 repository's assets/)")
    return str(path)


def build_sam3_image(variant: str, bpe_path: str | None = None) -> nn.Module:
    """SAM 3's ``Sam3Image`` in eval mode on the CPU, random weights (a ``torch.device('meta')``
    context builds it without memory)."""
    if variant not in RESOLUTION:
        raise ConfigError(f"backbone.variant={variant!r}: SAM 3 variants are {', '.join(RESOLUTION)}")
    bpe_path = bpe_path or default_bpe_path()
    bpe_path = str(Path(bpe_path).expanduser())
    if not Path(bpe_path).is_file():
        raise ConfigError(f"backbone.bpe_path={bpe_path}: no such file (CLIP's bpe_simple_vocab_16e6.txt.gz)")
    import_sam3()
    with _CudaFactoriesOn(_build_device()):
        if variant == "sam3":
            from sam3.model_builder import build_sam3_image_model
            model = build_sam3_image_model(bpe_path=bpe_path, device="cpu", eval_mode=True, checkpoint_path=None,
                                           load_from_HF=False, enable_segmentation=True, enable_inst_interactivity=False)
        else:
            model = _tiny_sam3_image(bpe_path).eval()
    drop_coordinate_caches(model)
    return model


def import_sam3() -> None:
    """Import the package once, without the warnings it prints at import (its video modules'
    CUDA autocast decorators on a machine without CUDA; ``box_ops``' ``torch.jit.script``, which
    torch calls deprecated)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="CUDA is not available", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        import sam3.model_builder  # noqa: F401


def _build_device() -> torch.device:
    """The device a ``torch.device(...)`` context asks for (meta in structure checks), else CPU."""
    return torch.empty(0).device


class _CudaFactoriesOn(TorchFunctionMode):
    """Tensors that upstream creates with ``device="cuda"`` while a model is built (its
    positional-encoding and box-bias coordinate tables) go to ``device`` instead. On the meta
    device, the ranges upstream reads back as Python numbers (``linspace(...).item()`` for the
    drop-path rates) stay on the CPU."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = self.device
        elif self.device.type == "meta" and func in (torch.linspace, torch.arange) and "device" not in kwargs:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


class _NoPinnedMemory(TorchFunctionMode):
    """``Tensor.pin_memory()`` returns the tensor itself: upstream pins a 4-value scale before
    copying it to the boxes' device, which fails on a machine without CUDA; the values are
    the same either way."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.pin_memory:
            return args[0]
        return func(*args, **(kwargs or {}))


def runnable_here():
    """A context for running the model: on a machine without CUDA, pinning memory is skipped
    (:class:`_NoPinnedMemory`); with CUDA, nothing changes."""
    return contextlib.nullcontext() if torch.cuda.is_available() else _NoPinnedMemory()


def drop_coordinate_caches(model: nn.Module) -> None:
    """Forget the coordinate tables upstream precomputes at build time (``PositionEmbeddingSine.cache``,
    the decoder's ``compilable_cord_cache``): both are recomputed with the same formula on the
    device of the first input, so a model built on the CPU runs on any device."""
    from sam3.model.decoder import TransformerDecoder
    from sam3.model.position_encoding import PositionEmbeddingSine
    for module in model.modules():
        if isinstance(module, PositionEmbeddingSine):
            module.cache = {}
        elif isinstance(module, TransformerDecoder) and hasattr(module, "compilable_cord_cache"):
            module.compilable_cord_cache, module.compilable_stored_size = None, None


def initialise_empty_tensors(model: nn.Module) -> None:
    """Random weights only: upstream's text encoder leaves ``positional_embedding`` and
    ``text_projection`` as ``torch.empty`` (a checkpoint fills them); they get CLIP's initial
    scales (std 0.01 and width^-0.5) so a model without weights computes finite numbers."""
    encoder = model.backbone.language_backbone.encoder
    with torch.no_grad():
        encoder.positional_embedding.normal_(std=0.01)
        encoder.text_projection.normal_(std=encoder.width ** -0.5)


def detector_state(checkpoint: dict) -> dict:
    """The image model's tensors of a released SAM 3 file (``{"model": ...}`` or a plain state
    dict): keys under ``detector.`` with the prefix dropped, as the package's loader reads them;
    the tracker's tensors are left out (the image model has no tracker). A file without any
    ``detector.`` key is returned as it is (a state dict of the image model itself, or another
    model's file, which the strict loader then reports key by key)."""
    state = checkpoint["model"] if isinstance(checkpoint.get("model"), dict) else checkpoint
    if not any(isinstance(key, str) and key.startswith(DETECTOR_PREFIX) for key in state):
        return state
    return {key[len(DETECTOR_PREFIX):]: value for key, value in state.items() if key.startswith(DETECTOR_PREFIX)}


# ----------------------------------------------------------------------------- the tiny preset
def _tiny_sam3_image(bpe_path: str, d_model: int = 64, width: int = 32, heads: int = 4) -> nn.Module:
    """SAM 3's image model from the package's modules at small widths (random weights)."""
    from sam3.model.decoder import TransformerDecoder, TransformerDecoderLayer
    from sam3.model.encoder import TransformerEncoderFusion, TransformerEncoderLayer
    from sam3.model.geometry_encoders import SequenceGeometryEncoder
    from sam3.model.maskformer_segmentation import PixelDecoder, UniversalSegmentationHead
    from sam3.model.model_misc import MLP, DotProductScoring, TransformerWrapper
    from sam3.model.model_misc import MultiheadAttentionWrapper as Attention
    from sam3.model.necks import Sam3DualViTDetNeck
    from sam3.model.position_encoding import PositionEmbeddingSine
    from sam3.model.sam3_image import Sam3Image
    from sam3.model.text_encoder_ve import VETextEncoder
    from sam3.model.tokenizer_ve import SimpleTokenizer
    from sam3.model.vitdet import ViT
    from sam3.model.vl_combiner import SAM3VLBackbone

    resolution, patch = RESOLUTION["tiny"], 14

    def position(precompute=None):
        return PositionEmbeddingSine(num_pos_feats=d_model, normalize=True, scale=None, temperature=10000,
                                     precompute_resolution=precompute)

    def attention(batch_first=None, dropout=0.0):
        extra = {} if batch_first is None else {"batch_first": batch_first}
        return Attention(num_heads=heads, dropout=dropout, embed_dim=d_model, **extra)

    vit = ViT(img_size=resolution, pretrain_img_size=patch * 6, patch_size=patch, embed_dim=width, depth=2,
              num_heads=2, mlp_ratio=4.0, norm_layer="LayerNorm", drop_path_rate=0.0, qkv_bias=True,
              use_abs_pos=True, tile_abs_pos=True, global_att_blocks=(1,), rel_pos_blocks=(), use_rope=True,
              use_interp_rope=True, window_size=6, pretrain_use_cls_token=True, retain_cls_token=False,
              ln_pre=True, ln_post=False, return_interm_layers=False, bias_patch_embed=False)
    neck = Sam3DualViTDetNeck(position_encoding=position(resolution), d_model=d_model,
                              scale_factors=[4.0, 2.0, 1.0, 0.5], trunk=vit, add_sam2_neck=False)
    text = VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=d_model, width=width, heads=2, layers=2)
    backbone = SAM3VLBackbone(visual=neck, text=text, scalp=1)

    def encoder_layer(**kwargs):
        return TransformerEncoderLayer(activation="relu", d_model=d_model, dim_feedforward=2 * d_model, dropout=0.0,
                                       pre_norm=True, **kwargs)

    encoder = TransformerEncoderFusion(
        layer=encoder_layer(pos_enc_at_attn=True, pos_enc_at_cross_attn_keys=False,
                            pos_enc_at_cross_attn_queries=False, self_attention=attention(True),
                            cross_attention=attention(True)),
        num_layers=1, d_model=d_model, num_feature_levels=1, frozen=False, use_act_checkpoint=False,
        add_pooled_text_to_img_feat=False, pool_text_with_mask=True)
    decoder = TransformerDecoder(
        layer=TransformerDecoderLayer(activation="relu", d_model=d_model, dim_feedforward=2 * d_model, dropout=0.0,
                                      cross_attention=attention(), n_heads=heads, use_text_cross_attention=True),
        num_layers=1, num_queries=20, return_intermediate=True, box_refine=True, num_o2m_queries=0, dac=True,
        boxRPB="log", d_model=d_model, frozen=False, interaction_layer=None, dac_use_selfatt_ln=True,
        resolution=resolution, stride=patch, use_act_checkpoint=False, presence_token=True)
    scoring = DotProductScoring(d_model=d_model, d_proj=d_model, prompt_mlp=MLP(
        input_dim=d_model, hidden_dim=2 * d_model, output_dim=d_model, num_layers=2, dropout=0.0, residual=True,
        out_norm=nn.LayerNorm(d_model)))
    segmentation = UniversalSegmentationHead(
        hidden_dim=d_model, upsampling_stages=3, aux_masks=False, presence_head=False, dot_product_scorer=None,
        act_ckpt=False, cross_attend_prompt=attention(),
        pixel_decoder=PixelDecoder(num_upsampling_stages=3, interpolation_mode="nearest", hidden_dim=d_model))
    geometry = SequenceGeometryEncoder(
        pos_enc=position(), encode_boxes_as_points=False, points_direct_project=True, points_pool=True,
        points_pos_enc=True, boxes_direct_project=True, boxes_pool=True, boxes_pos_enc=True, d_model=d_model,
        num_layers=1, use_act_ckpt=False, add_cls=True, add_post_encode_proj=True,
        layer=encoder_layer(pos_enc_at_attn=False, pos_enc_at_cross_attn_queries=False,
                            pos_enc_at_cross_attn_keys=True, self_attention=attention(False),
                            cross_attention=attention(False)))
    return Sam3Image(backbone=backbone, transformer=TransformerWrapper(encoder=encoder, decoder=decoder, d_model=d_model),
                     input_geometry_encoder=geometry, segmentation_head=segmentation, num_feature_levels=1,
                     o2m_mask_predict=True, dot_prod_scoring=scoring, use_instance_query=False, multimask_output=True,
                     inst_interactive_predictor=None, matcher=None)
