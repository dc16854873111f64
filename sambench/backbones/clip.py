"""A frozen open_clip CLIP: text embeddings, dense image features, and CoOp's text path.

Weights load from a local file only (``.safetensors`` or a ``torch.load``-able state dict, with
``weights_only=True``); ``model=tiny`` builds a small random ViT CLIP (tests, embedded default).
ResNet models (RN50, RN50x16, ...; OV-SAM) give their four stage maps at strides 4/8/16/32 and
the ``attnpool`` head for region features. Dense features (ViT models): the image is resized so its long side is ``dense_size`` and
zero-padded at the bottom/right to a square (the same top-left letterbox as SAM's input, so a
SAM mask and a CLIP feature map cover the same frame), the position embedding is interpolated
to the patch grid, and every patch token goes through ``ln_post`` and ``proj``:
D×g×g L2-normalised features (the "feature crop" classifier pools them under a mask). ResNet
models have their own dense features (:meth:`ClipBackbone.resnet_dense_features`, same letterbox,
g = S / 32): the ``attnpool`` value path applied per location of the layer4 map (MaskCLIP).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file as load_safetensors
from torch import nn

from sambench.backbones.sam_checkpoint import file_sha256, module_sha256
from sambench.cache import EmbeddingCache
from sambench.errors import CheckpointError, ConfigError
from sambench.weights_file import load_weights_file

TINY_TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
#: Small random presets for tests: a ViT CLIP (dense features) and a ResNet CLIP (stage features).
PRESETS = {
    "tiny": dict(embed_dim=64, vision_cfg=dict(layers=2, width=64, head_width=32, patch_size=16, image_size=224)),
    "tiny_rn": dict(embed_dim=64, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=64)),
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DOWNLOAD_HINT = (
    "download the open_clip weights of this model (e.g. the Hugging Face file open_clip_model.safetensors "
    "or open_clip_pytorch_model.bin of timm/vit_base_patch16_clip_224.openai) and pass method.clip.checkpoint=<file>"
)


class ClipBackbone(nn.Module):
    """Frozen CLIP with sambench's entry points.

    Args:
        model: an open_clip model name (``ViT-B-16``, ``RN50x16``, ...) or ``tiny`` / ``tiny_rn``.
        checkpoint: local weights file; required unless ``allow_random_init``.
        dense_size: long side of the image for dense features (multiple of the patch size).
        cache_dir: cache of dense features (keyed by image, model and weights); None = off.
        init_seed: seed of random initialisation (tiny / allow_random_init).
    """

    def __init__(self, *, model: str = "ViT-B-16", checkpoint: str | None = None, allow_random_init: bool = False,
                 dense_size: int = 448, cache_dir: str | None = None, init_seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.clip = self._build(model)
        if checkpoint:
            self._load(checkpoint, model)
        elif not allow_random_init:
            raise CheckpointError(f"method.clip.checkpoint is not set for CLIP {model}: {DOWNLOAD_HINT}")
        from open_clip.tokenizer import SimpleTokenizer
        from open_clip.transformer import VisionTransformer

        self.is_vit = isinstance(self.clip.visual, VisionTransformer)
        patch = self.clip.visual.conv1.kernel_size[0] if self.is_vit else 32
        if self.is_vit and dense_size % patch:
            raise ConfigError(f"method.clip.dense_size={dense_size} must be a multiple of the patch size {patch}")
        self.clip.requires_grad_(False).eval()
        self.name, self.dense_size, self.patch, self.checkpoint = model, dense_size, patch, checkpoint
        self.tokenizer = SimpleTokenizer(context_length=self.clip.context_length)
        self.cache = None
        if cache_dir:  # keyed by the weights' content, as SAM's embeddings
            weights = file_sha256(str(Path(checkpoint).expanduser()))[:16] if checkpoint else module_sha256(self.clip.visual)[:16]
            kind = "" if self.is_vit else "-value"  # ResNet: the attnpool value path (resnet_dense_features)
            self.cache = EmbeddingCache(cache_dir, f"clip-{model}-{weights}-{dense_size}{kind}")

    @staticmethod
    def _build(model: str) -> nn.Module:
        import open_clip  # here, not at import: a CLI run without CLIP skips ~1 s
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        if model in PRESETS:
            preset = PRESETS[model]
            return open_clip.CLIP(embed_dim=preset["embed_dim"], vision_cfg=CLIPVisionCfg(**preset["vision_cfg"]),
                                  text_cfg=CLIPTextCfg(**TINY_TEXT))
        if model not in open_clip.list_models():
            raise ConfigError(f"unknown CLIP model '{model}'; open_clip knows e.g. ViT-B-16, ViT-L-14 (open_clip.list_models())")
        return open_clip.create_model(model, pretrained=None, device=torch.get_default_device())  # meta: FLOP counting

    def _load(self, checkpoint: str, model: str) -> None:
        path = Path(checkpoint).expanduser()
        expected = f"the open_clip state dict of CLIP {model}; {DOWNLOAD_HINT}"
        if path.suffix == ".safetensors" and path.is_file():
            try:
                state = load_safetensors(str(path))
            except Exception as exc:  # safetensors raises several error types
                raise CheckpointError(f"cannot read {path} ({exc}); expected {expected}") from None
        else:
            state = load_weights_file(path, expected)
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict; expected {expected}")
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = self.clip.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{checkpoint} does not fit CLIP {model}: missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]} "
                f"({len(missing)} / {len(unexpected)} keys); is it the open_clip state dict of this model?"
            )

    def train(self, mode: bool = True) -> "ClipBackbone":
        """CLIP is frozen: it stays in eval mode whatever the engine asks (a ResNet's BatchNorm
        would otherwise normalise with batch statistics and move its running statistics)."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @functools.cached_property
    def weights_id(self) -> str:
        """Fingerprint of the weights (the file's sha256, or the random model's parameters)."""
        if self.checkpoint:
            return file_sha256(str(Path(self.checkpoint).expanduser()))[:16]
        return module_sha256(self.clip)[:16]

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[-1])

    # ----- text -------------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """B×77 token ids (``<start> … <end>``, zero-padded)."""
        return self.tokenizer(list(texts)).to(self.device)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """B×D L2-normalised text embeddings."""
        return F.normalize(self.clip.encode_text(self.tokenize(texts)), dim=-1)

    def encode_token_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """CoOp's path: token embeddings B×77×W (learnable context already written in) and the
        token ids B×77 (for the end-of-text position) -> B×D L2-normalised embeddings."""
        clip = self.clip
        x = embeddings + clip.positional_embedding.to(embeddings.dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # end-of-text (largest id)
        x = clip.text_projection(x) if isinstance(clip.text_projection, nn.Linear) else x @ clip.text_projection
        return F.normalize(x, dim=-1)

    # ----- images -----------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """H×W×3 uint8 -> 1×3×S×S (long side S = dense_size, CLIP-normalised, padded bottom/right)."""
        h, w = image.shape[:2]
        scale = self.dense_size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        x = torch.as_tensor(image, device=self.device).permute(2, 0, 1)[None].float() / 255.0
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)) / x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
        return F.pad(x, (0, self.dense_size - nw, 0, self.dense_size - nh))

    def stage_features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """ResNet CLIP: B×3×S×S -> the outputs of layer1..layer4 (strides 4, 8, 16, 32; RN50x16:
        384, 768, 1536, 3072 channels)."""
        from open_clip.modified_resnet import ModifiedResNet

        visual = self.clip.visual
        if not isinstance(visual, ModifiedResNet):
            raise ConfigError(f"CLIP {self.name}: stage features need a ResNet image tower (RN50, RN50x16, ...)")
        x, out = visual.stem(pixels), []
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
            out.append(x)
        return out

    def pool_regions(self, regions: torch.Tensor) -> torch.Tensor:
        """ResNet CLIP: layer4 region maps K×C×s×s (s = the attnpool grid, RN50x16: 12) -> K×D
        CLIP image embeddings (the ``attnpool`` head)."""
        return self.clip.visual.attnpool(regions)

    def _require_vit(self, vit: bool) -> None:
        """Dense features of the other tower kind are a config error (checked before the cache,
        whose entries hold the one kind this model has)."""
        if vit and not self.is_vit:
            raise ConfigError(f"CLIP {self.name}: dense patch features need a ViT image tower (ViT-*)")
        if not vit and self.is_vit:
            raise ConfigError(f"CLIP {self.name}: attnpool value features need a ResNet image tower (RN50, RN50x16, ...)")

    def dense_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """B×3×S×S -> B×D×g×g L2-normalised patch features (g = S / patch)."""
        self._require_vit(True)
        visual = self.clip.visual
        x = visual.conv1(pixels)
        b, c, g, _ = x.shape
        x = x.flatten(2).transpose(1, 2)
        pos = visual.positional_embedding
        cls_pos, grid_pos = pos[:1], pos[1:]
        old = int(round(grid_pos.shape[0] ** 0.5))
        if old != g:
            grid_pos = F.interpolate(grid_pos.reshape(1, old, old, c).permute(0, 3, 1, 2), size=(g, g), mode="bicubic",
                                     align_corners=False).permute(0, 2, 3, 1).reshape(g * g, c)
        cls = visual.class_embedding.to(x.dtype).expand(b, 1, c)
        x = torch.cat([cls, x], dim=1) + torch.cat([cls_pos, grid_pos]).to(x.dtype)
        x = visual.transformer(visual.ln_pre(x))
        tokens = visual.ln_post(x[:, 1:])
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        return F.normalize(tokens, dim=-1).transpose(1, 2).reshape(b, -1, g, g)

    def attnpool_values(self, layer4: torch.Tensor) -> torch.Tensor:
        """ResNet CLIP: layer4 maps B×C×h×w (any h, w) -> B×D×h×w L2-normalised ``c_proj(v_proj(x))``
        at every location x: the ``attnpool`` value path without positional embedding or
        attention (MaskCLIP's dense features)."""
        self._require_vit(False)
        pool = self.clip.visual.attnpool
        x = layer4.permute(0, 2, 3, 1)  # B×h×w×C
        return F.normalize(pool.c_proj(pool.v_proj(x)), dim=-1).permute(0, 3, 1, 2)

    def resnet_dense_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """ResNet CLIP: B×3×S×S -> B×D×g×g (g = S / 32) :meth:`attnpool_values` of the layer4 map."""
        return self.attnpool_values(self.stage_features(pixels)[-1])

    def _cached_dense(self, images: list[np.ndarray], from_pixels) -> torch.Tensor:
        """One image at a time through ``from_pixels``, or from the cache."""
        out = []
        for image in images:
            key = EmbeddingCache.image_key(image) if self.cache else None
            features = self.cache.get(key) if self.cache else None
            if features is None:
                features = from_pixels(self.preprocess(image))[0].float()
                if self.cache:
                    self.cache.put(key, features)
            out.append(features.to(self.device))
        return torch.stack(out)

    @torch.no_grad()
    def dense_features(self, images: list[np.ndarray]) -> torch.Tensor:
        """Frozen dense features B×D×g×g (float32), through the cache when enabled."""
        self._require_vit(True)
        return self._cached_dense(images, self.dense_from_pixels)

    @torch.no_grad()
    def resnet_dense_features(self, images: list[np.ndarray]) -> torch.Tensor:
        """ResNet CLIP: frozen :meth:`resnet_dense_from_pixels` features B×D×g×g (float32) of the
        letterboxed images, through the cache when enabled."""
        self._require_vit(False)
        return self._cached_dense(images, self.resnet_dense_from_pixels)
