"""On-disk cache of SAM image embeddings.

Key = SHA-256 of the image bytes (+ shape) + backbone name + weights fingerprint, so a cached
embedding is never reused for another image, another SAM size or other weights. Writes go to a
unique temporary file that is renamed into place: several processes (DDP ranks, parallel runs)
may write the same entry at once and a reader never sees a partial file.

Entries that cannot be trusted are misses (recomputed and rewritten): unreadable files, other
objects than a float32 tensor, and tensors whose shape differs from the one recorded in
``<namespace>/entry.json`` by the writes. A write that fails (disk full, read-only folder) logs
one warning and turns the cache off for the rest of the run; the results are the same.

An entry is the image embedding tensor alone (C×h×w), which is all of SAM v1's
``ImageFeatures``; extra feature levels are not cached yet: a backbone with levels (SAM 2.1,
HQ-SAM) must extend the entry (and its shape record) before it caches them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
RECORD = "entry.json"


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
        self.corrupt = 0
        self.writable = True
        self._shape: tuple[int, ...] | None = None

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        """SHA-256 of an H×W×3 uint8 image's shape, dtype and bytes."""
        digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def expected_shape(self) -> tuple[int, ...] | None:
        """The entry shape recorded by earlier writes (None before the first one)."""
        if self._shape is None:
            try:
                self._shape = tuple(int(n) for n in json.loads((self.folder / RECORD).read_text())["shape"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return self._shape

    def get(self, key: str) -> torch.Tensor | None:
        """The cached tensor, or None (a missing, unreadable or wrong-shaped entry is a miss)."""
        file = self.path(key)
        try:
            tensor = torch.load(file, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            tensor = None
        except Exception:  # truncated or garbage: unpickling errors come in many types
            tensor = self._discard(file, "unreadable")
        if tensor is not None and not (isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32):
            tensor = self._discard(file, "not a float32 tensor")
        expected = self.expected_shape()
        if tensor is not None and expected is not None and tuple(tensor.shape) != expected:
            tensor = self._discard(file, f"shape {tuple(tensor.shape)}, expected {expected}")
        if tensor is None:
            self.misses += 1
            return None
        self.hits += 1
        return tensor

    def _discard(self, file: Path, why: str) -> None:
        self.corrupt += 1
        if self.corrupt <= 3:
            log.warning("cache entry %s is corrupt (%s): recomputing it", file, why)
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store a tensor atomically (write to a unique temp name, then rename); a failed write
        warns once and disables the cache (the caller keeps its freshly computed tensor)."""
        if not self.writable:
            return
        file = self.path(key)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        value = tensor.detach().to("cpu", torch.float32).contiguous().clone()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            if self.expected_shape() != tuple(value.shape):
                self._record_shape(tuple(value.shape))
            torch.save(value, tmp)
            os.replace(tmp, file)
        except (OSError, RuntimeError) as exc:  # ENOSPC / EROFS; torch reports write failures as RuntimeError
            self.writable = False
            log.warning("cannot write to the embedding cache %s (%s): continuing without caching",
                        self.folder, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        finally:
            tmp.unlink(missing_ok=True)

    def _record_shape(self, shape: tuple[int, ...]) -> None:
        record = self.folder / RECORD
        tmp = record.with_name(f".{RECORD}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps({"shape": list(shape)}))
            os.replace(tmp, record)
        finally:
            tmp.unlink(missing_ok=True)
        self._shape = shape
