"""On-disk cache of SAM image embeddings.

Key = SHA-256 of the image bytes (+ shape) + backbone name + weights fingerprint, so a cached
embedding is never reused for another image, another SAM size or other weights. Writes go to a
unique temporary file that is renamed into place: several processes (DDP ranks, parallel runs)
may write the same entry at once and a reader never sees a partial file.

Entries that cannot be trusted are misses (recomputed and rewritten): unreadable files, other
objects than a float32 tensor, and tensors whose shape differs from the one recorded in
``<namespace>/entry.json`` by the writes. A write that fails (disk full, read-only folder) logs
one warning and turns the cache off for the rest of the run; the results are the same.

An entry is a float32 tensor (SAM v1: the embedding C×h×w; CLIP: its features) or a dict of
named float32 tensors (SAM 2.1 and HQ-SAM: ``embedding`` plus every extra feature level); the
shape record holds the tensor's shape, or each name's shape.
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
#: an entry's shape: a tensor's, or {name: shape} for a dict entry
Shape = tuple[int, ...] | dict[str, tuple[int, ...]]
Entry = torch.Tensor | dict[str, torch.Tensor]


def entry_shape(entry) -> Shape | None:
    """The shape of a valid entry (float32 tensor, or non-empty dict of them); None otherwise."""
    if isinstance(entry, torch.Tensor):
        return tuple(entry.shape) if entry.dtype == torch.float32 else None
    if isinstance(entry, dict) and entry and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 and v.dtype == torch.float32 for k, v in entry.items()):
        return {name: tuple(value.shape) for name, value in sorted(entry.items())}
    return None


def _from_json(shape) -> Shape:
    if isinstance(shape, dict):
        return {str(name): tuple(int(n) for n in dims) for name, dims in sorted(shape.items())}
    return tuple(int(n) for n in shape)


class EmbeddingCache:
    """Embedding store under ``root/<namespace>/<k[:2]>/<k>.pt`` (a float32 tensor, or a dict
    of named float32 tensors, per entry).

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
        self._shape: Shape | None = None

    @staticmethod
    def image_key(image: np.ndarray) -> str:
        """SHA-256 of an H×W×3 uint8 image's shape, dtype and bytes."""
        digest = hashlib.sha256(f"{image.shape}{image.dtype}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
        return digest.hexdigest()

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def expected_shape(self) -> Shape | None:
        """The entry shape recorded by earlier writes (None before the first one)."""
        if self._shape is None:
            try:
                self._shape = _from_json(json.loads((self.folder / RECORD).read_text())["shape"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None
        return self._shape

    def get(self, key: str) -> Entry | None:
        """The cached entry, or None (a missing, unreadable or wrong-shaped entry is a miss)."""
        file = self.path(key)
        try:
            tensor = torch.load(file, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            tensor = None
        except Exception:  # truncated or garbage: unpickling errors come in many types
            tensor = self._discard(file, "unreadable")
        shape = entry_shape(tensor) if tensor is not None else None
        if tensor is not None and shape is None:
            tensor = self._discard(file, "not a float32 tensor or a dict of them")
        expected = self.expected_shape()
        if tensor is not None and expected is not None and shape != expected:
            tensor = self._discard(file, f"shape {shape}, expected {expected}")
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

    def put(self, key: str, entry: Entry) -> None:
        """Store a tensor (or a dict of named tensors) atomically (write to a unique temp name,
        then rename); a failed write warns once and disables the cache (the caller keeps its
        freshly computed values)."""
        if not self.writable:
            return
        file = self.path(key)
        tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        value = (_stored(entry) if isinstance(entry, torch.Tensor)
                 else {name: _stored(tensor) for name, tensor in sorted(entry.items())})
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            if self.expected_shape() != entry_shape(value):
                self._record_shape(entry_shape(value))
            torch.save(value, tmp)
            os.replace(tmp, file)
        except (OSError, RuntimeError) as exc:  # ENOSPC / EROFS; torch reports write failures as RuntimeError
            self.writable = False
            log.warning("cannot write to the embedding cache %s (%s): continuing without caching",
                        self.folder, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        finally:
            tmp.unlink(missing_ok=True)

    def _record_shape(self, shape: Shape) -> None:
        record = self.folder / RECORD
        tmp = record.with_name(f".{RECORD}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            as_json = {n: list(d) for n, d in shape.items()} if isinstance(shape, dict) else list(shape)
            tmp.write_text(json.dumps({"shape": as_json}))
            os.replace(tmp, record)
        finally:
            tmp.unlink(missing_ok=True)
        self._shape = shape


def _stored(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous float32 CPU copy (never a view of a larger storage)."""
    return tensor.detach().to("cpu", torch.float32).contiguous().clone()
