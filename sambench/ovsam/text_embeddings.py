"""Class-name text embeddings for the open-vocabulary classifier (synonyms × ViLD templates).

``build_text_embeddings`` -> ``C×P×D`` (P = most synonyms of any class; shorter lists padded by
repeating the first synonym). Each synonym's embedding = L2-normalise(mean over the 14 templates
of the L2-normalised template embeddings). ``cached_text_embeddings`` stores the result on disk
(generated automatically when missing), keyed by sha256(model name, weights id, class list).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

from sambench.data.open_vocab import synonyms

VILD_TEMPLATES = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def class_synonyms(name: str) -> list[str]:
    """``"Dining_table/table"`` -> ``["dining table", "table"]`` (the datasets' rule,
    :func:`sambench.data.open_vocab.synonyms`); a name with no synonym left is an error."""
    names = synonyms(name)
    if not names:
        raise ValueError(f"class name {name!r} has no synonym")
    return names


@torch.no_grad()
def build_text_embeddings(clip, class_names: list[str], templates=VILD_TEMPLATES) -> torch.Tensor:
    """clip: any object with ``encode_text(list[str]) -> B×D``; -> C×P×D float32 on the device of its output."""
    per_class = []
    for name in class_names:
        synonyms = class_synonyms(name)
        prompts = [t.format(s) for s in synonyms for t in templates]
        emb = F.normalize(clip.encode_text(prompts).float(), dim=-1)  # (S·T)×D
        emb = F.normalize(emb.view(len(synonyms), len(templates), -1).mean(dim=1), dim=-1)  # S×D
        per_class.append(emb)
    p_max = max(e.shape[0] for e in per_class)
    padded = [torch.cat([e, e[:1].expand(p_max - e.shape[0], -1)]) for e in per_class]
    return torch.stack(padded)


def text_cache_key(model_name: str, weights_id: str, class_names: list[str]) -> str:
    """sha256 hex of (model name, weights id, class list, templates)."""
    payload = json.dumps([model_name, weights_id, list(class_names), list(VILD_TEMPLATES)])
    return hashlib.sha256(payload.encode()).hexdigest()


def text_cache_file(cache_dir: str | os.PathLike, model_name: str, weights_id: str, class_names: list[str]) -> Path:
    """``cache_dir/text-<model>-<key[:16]>.pt`` of a (model, weights, class list)."""
    key = text_cache_key(model_name, weights_id, class_names)
    safe_model = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    return Path(cache_dir).expanduser() / f"text-{safe_model}-{key[:16]}.pt"


def cached_text_embeddings(clip, class_names: list[str], cache_dir: str | os.PathLike, model_name: str,
                           weights_id: str) -> torch.Tensor:
    """C×P×D embeddings from :func:`text_cache_file`; built with :func:`build_text_embeddings`
    and written atomically (a plain dict, read back with ``weights_only=True``) when missing,
    unreadable or for another class list."""
    key = text_cache_key(model_name, weights_id, class_names)
    file = text_cache_file(cache_dir, model_name, weights_id, class_names)
    try:
        entry = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # missing or corrupt: regenerate
        entry = None
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("embeddings"), torch.Tensor) \
            and entry["embeddings"].shape[0] == len(class_names):
        return entry["embeddings"]
    embeddings = build_text_embeddings(clip, class_names).cpu().contiguous()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save({"key": key, "model": model_name, "weights": weights_id, "class_names": list(class_names),
                    "templates": list(VILD_TEMPLATES), "embeddings": embeddings}, tmp)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return embeddings
