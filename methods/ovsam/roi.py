"""Multi-level RoIAlign (standard FPN level mapping) and the CLIP2SAM region embedding.

``rois`` are ``K×5``: (batch index, x1, y1, x2, y2) in input-image pixels (the 1024 frame).
Level of a box = ``floor(log2(sqrt(w·h) / finest_scale + 1e-6))`` clamped to [0, L−1]; with
finest_scale 56: side < 112 -> level 0 (stride 4), < 224 -> 1, < 448 -> 2, else 3.
RoIAlign uses ``aligned=True`` (the half-pixel-corrected RoIAlign, default of the original).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align


def map_roi_levels(boxes: torch.Tensor, num_levels: int = 4, finest_scale: float = 56.0) -> torch.Tensor:
    """boxes N×4 (x1, y1, x2, y2) -> N long pyramid levels in [0, num_levels−1]."""
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def multi_level_roi_align(features: list[torch.Tensor], rois: torch.Tensor, strides=(4, 8, 16, 32),
                          output_size: int = 12, sampling_ratio: int = 0, finest_scale: float = 56.0,
                          aligned: bool = True) -> torch.Tensor:
    """features: L maps B×C×H_l×W_l; rois K×5 -> K×C×output_size×output_size.

    Each RoI is pooled from the single level chosen by :func:`map_roi_levels`, with
    ``spatial_scale = 1 / stride`` of that level. Levels no RoI maps to still join the autograd
    graph (0 × one of their values), so DDP sees a gradient for every FPN parameter.
    """
    if len(features) != len(strides):
        raise ValueError(f"{len(features)} feature maps but {len(strides)} strides")
    c = features[0].shape[1]
    out = features[0].new_zeros((rois.shape[0], c, output_size, output_size))
    if rois.shape[0] == 0:
        return out
    rois = rois.to(features[0].dtype)
    levels = map_roi_levels(rois[:, 1:], num_levels=len(features), finest_scale=finest_scale)
    for level, (feat, stride) in enumerate(zip(features, strides)):
        idx = torch.nonzero(levels == level, as_tuple=True)[0]
        if idx.numel():
            out[idx] = roi_align(feat, rois[idx], output_size, spatial_scale=1.0 / stride,
                                 sampling_ratio=sampling_ratio, aligned=aligned)
    if any(f.requires_grad for f in features):
        out = out + sum(f.reshape(-1)[0] for f in features) * 0.0
    return out


class RegionEmbedding(nn.Module):
    """RoI features K×C×S×S -> K×embed_dim: Conv1×1 (no bias) + ReLU + spatial mean."""

    def __init__(self, in_channels: int = 256, embed_dim: int = 768):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, 1, bias=False)

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(roi_features)).mean(dim=(2, 3))
