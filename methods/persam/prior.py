"""PerSAM's reference processing, similarity map, location prior and guidance, as the official ``persam.py``
computes them.

Shapes: SAM embeddings are 256×64×64; similarity maps are H×W at the original image size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sambench.errors import DatasetError


def reference_cells(sam, mask_rgb: np.ndarray) -> torch.Tensor:
    """64×64 bool foreground cells of a reference mask, as the official code computes them.

    The RGB mask is resized like the image (longest side 1024, PIL bilinear), normalised with
    SAM's pixel mean/std and zero-padded (``Sam.preprocess``), bilinearly resized to 64×64, and
    its red channel thresholded at 0 — i.e. resized R > 123.675, which erodes PerSeg's R = 128
    masks slightly. Padding is exactly 0 in normalised space, hence never foreground.
    """
    normalised = sam.preprocess(mask_rgb)  # 1×3×1024×1024
    size = sam.image_size // 16
    return F.interpolate(normalised, size=(size, size), mode="bilinear")[0, 0] > 0


def foreground_features(embedding: torch.Tensor, cells: torch.Tensor, name: str = "") -> torch.Tensor:
    """Features of the foreground cells: embedding 256×64×64, cells 64×64 -> K×256."""
    if not bool(cells.any()):
        raise DatasetError(
            f"reference mask {name or ''} has no foreground left at SAM's 64×64 feature resolution "
            "(empty or too small mask); expected a visible object mask"
        )
    return embedding.permute(1, 2, 0)[cells]


def densest_cell(mask: torch.Tensor, input_size, image_size: int = 1024, grid: int = 64) -> tuple[int, int]:
    """(row, col) of the grid×grid cell holding most pixels of the non-empty H×W mask: pixel
    centres scaled into the resized frame (``input_size`` (h, w), longest side ``image_size``),
    cells of ``image_size / grid`` pixels; ties: the first in row-major order. Never a padding cell."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    h, w = mask.shape
    stride = image_size / grid
    rows = ((ys.double() + 0.5) * input_size[0] / h / stride).long().clamp(max=grid - 1)
    cols = ((xs.double() + 0.5) * input_size[1] / w / stride).long().clamp(max=grid - 1)
    best = int(torch.bincount(rows * grid + cols, minlength=grid * grid).argmax())
    return best // grid, best % grid


def densest_cell_mask(sam, mask, grid: int) -> torch.Tensor:
    """grid×grid bool holding only the cell with most pixels of the non-empty H×W ``mask``: what
    stands in for a reference that keeps no foreground cell (a small object)."""
    row, col = densest_cell(torch.as_tensor(mask), sam.input_size(tuple(mask.shape[:2])), sam.image_size, grid)
    cells = torch.zeros(grid, grid, dtype=torch.bool)
    cells[row, col] = True
    return cells


def normalise(features: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return features / features.norm(dim=dim, keepdim=True)


def similarity_map(sam, target_feat: torch.Tensor, embedding: torch.Tensor, original_size) -> torch.Tensor:
    """Cosine similarity of the target feature (1×256, L2-normalised) with every location of
    ``embedding`` (256×64×64), upsampled ×4 and post-processed like SAM's masks -> H×W."""
    c, h, w = embedding.shape
    test_feat = normalise(embedding, dim=0).reshape(c, h * w)
    sim = (target_feat @ test_feat).reshape(1, 1, h, w)
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
    return sam.postprocess(sim, original_size)[0, 0]


def local_similarity_map(sam, fg_features: torch.Tensor, embedding: torch.Tensor, original_size) -> torch.Tensor:
    """The later paper version's confidence map: the mean of the per-foreground-cell cosine
    similarity maps, i.e. the mean of the L2-normalised foreground features as target -> H×W."""
    return similarity_map(sam, normalise(fg_features).mean(0, keepdim=True), embedding, original_size)


def flat_index_to_xy(index: torch.Tensor, width: int) -> torch.Tensor:
    """Row-major flat indices (K) -> K×2 (x = column, y = row) float pixel coordinates."""
    return torch.stack([index % width, index // width], dim=-1).float()


def location_prior(sim: torch.Tensor, positives: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive point(s) at the highest and the negative point at the lowest similarity.

    Ties resolve to the first pixel in row-major order (``argmax``/``argmin`` on the flat map).
    Returns positives K×2 and negative 1×2, (x, y) in original pixels.
    """
    flat = sim.flatten()
    if positives == 1:
        pos_index = flat.argmax()[None]
    else:
        pos_index = flat.topk(positives).indices
    return flat_index_to_xy(pos_index, sim.shape[1]), flat_index_to_xy(flat.argmin()[None], sim.shape[1])


def guidance(sim: torch.Tensor, grid: int = 64) -> torch.Tensor:
    """Target-guided attention bias: z-score (unbiased std) the H×W map, resize it to
    ``grid``×``grid`` bilinearly (from the un-padded map, as the official code does), sigmoid ->
    1×1×1×grid²."""
    z = (sim - sim.mean()) / torch.std(sim)
    z = F.interpolate(z[None, None], size=(grid, grid), mode="bilinear")
    return z.sigmoid().reshape(1, 1, 1, grid * grid)


def mask_box(mask: torch.Tensor) -> torch.Tensor | None:
    """The official refinement box of an H×W bool mask: [x_min, y_min, x_max, y_max] with
    inclusive maxima (1×4), or None for an empty mask."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(xs) == 0:
        return None
    return torch.tensor([[xs.min(), ys.min(), xs.max(), ys.max()]], dtype=torch.float32)
