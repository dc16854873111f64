"""Default prompts, computed once: a grid of points through SAM's prompt encoder and class
names through CLIP's text encoder.

Spatial (sambench design): ``grid``×``grid`` points at the cell centres of the image region of
SAM's 1024² input frame for an image of aspect ``grid_aspect`` (width/height; 2.0 = Cityscapes),
each a positive point, encoded as SAM encodes a lone point (point token + padding token):
Q×2×256 with Q = grid². The same embeddings serve every image (prompts live in embedding space).
Semantic: CLIP text embeddings of ``template.format(name)``, L2-normalised: C×D.
"""

from __future__ import annotations

import torch


def grid_points(grid: int, aspect: float, frame: int = 1024, keeps_aspect: bool = True) -> torch.Tensor:
    """Q×2 (x, y) cell centres in SAM's input frame (long side ``frame``, top-left aligned; a
    backbone that stretches the image to the square, ``keeps_aspect`` False, covers it all)."""
    width, height = (frame, frame / aspect) if aspect >= 1 else (frame * aspect, frame)
    if not keeps_aspect:
        width = height = frame
    xs = (torch.arange(grid, dtype=torch.float32) + 0.5) * width / grid
    ys = (torch.arange(grid, dtype=torch.float32) + 0.5) * height / grid
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], dim=1)


@torch.no_grad()
def spatial_defaults(sam, grid: int, aspect: float) -> torch.Tensor:
    """Q×2×256 sparse embeddings of the grid points (``sam``: the backbone; its prompt encoder, run once)."""
    points = grid_points(grid, aspect, sam.image_size, sam.KEEPS_ASPECT).to(sam.device)
    labels = torch.ones(len(points), 1, dtype=torch.long, device=points.device)
    sparse, _ = sam.encode_frame_prompts(points=points[:, None], point_labels=labels)
    return sparse


@torch.no_grad()
def semantic_defaults(clip, class_names: list[str], template: str) -> torch.Tensor:
    """C×D L2-normalised CLIP text embeddings of the class names (run once)."""
    return clip.encode_text([template.format(name) for name in class_names])
