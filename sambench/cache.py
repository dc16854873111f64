"""On-disk cache of SAM image embeddings.

Key = SHA-256 of the image bytes (+ shape) + backbone name + weights fingerprint, so a cached
embedding is never reused for another image, another SAM size or other weights. Writes go to a
unique temporary file that is renamed into place: several processes (DDP ranks, parallel runs)
may write the same entry at once and a reader never sees a partial file.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import torch


class EmbeddingCache:
    """Embedding store under ``root/<namespace>/<k[:2]>/<k>.pt`` (float32 tensors).

    Args:
        root: cache folder (created on first write).
        namespace: backbone name + weights fingerprint; separates models.
    """

    def __init__(self, root: str | os.PathLike, namespace: str):
        self.folder = Path(root).expanduser() / namespace
        self.hits = 0
        self.misses = 0

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        """SHA-256 of an H×W×3 uint8 image's shape, dtype and bytes."""
        digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor, or None (a missing or unreadable entry counts as a miss)."""
        file = self.path(key)
        try:
            tensor = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:  # missing, truncated or garbage: unpickling errors come in many types
            tensor = None
        if not isinstance(tensor, torch.Tensor):
            self.misses += 1
            return None
        self.hits += 1
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store a tensor atomically (write to a unique temp name, then rename)."""
        file = self.path(key)
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            torch.save(tensor.detach().to("cpu", torch.float32).contiguous().clone(), tmp)
            os.replace(tmp, file)
        finally:
            tmp.unlink(missing_ok=True)
