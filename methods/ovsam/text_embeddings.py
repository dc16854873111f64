"""Class-name text embeddings for the open-vocabulary classifier (synonyms × ViLD templates).

``build_text_embeddings`` -> ``C×P×D`` (P = most synonyms of any class; shorter lists padded by
repeating the first synonym). Each synonym's embedding = L2-normalise(mean over the 14 templates
of the L2-normalised template embeddings). A class's synonyms are its name split by
:func:`class_synonyms`, or, given ``synonym_lists`` (a dataset's ``class_names_file``), that
class's list verbatim. ``cached_text_embeddings`` stores the result on disk (generated
automatically when missing), keyed by sha256(model name, weights id, class list, synonym lists).
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


def vocabulary_synonyms(class_names: list[str], synonym_lists: list[list[str]] | None = None) -> list[list[str]]:
    """Per class its synonyms: ``synonym_lists[c]`` when given (one list per class, checked),
    else :func:`class_synonyms` of the name."""
    if synonym_lists is None:
        return [class_synonyms(name) for name in class_names]
    if len(synonym_lists) != len(class_names) or not all(lists and all(isinstance(s, str) and s for s in lists)
                                                         for lists in synonym_lists):
        raise ValueError(f"synonym_lists must hold one non-empty list of names per class ({len(class_names)} classes, "
                         f"got {len(synonym_lists)} lists)")
    return [list(lists) for lists in synonym_lists]


@torch.no_grad()
def build_text_embeddings(clip, class_names: list[str], templates=VILD_TEMPLATES,
                          synonym_lists: list[list[str]] | None = None) -> torch.Tensor:
    """clip: any object with ``encode_text(list[str]) -> B×D``; -> C×P×D float32 on the device of
    its output (P = the longest synonym list; shorter ones padded with their first synonym)."""
    per_class = []
    for synonyms in vocabulary_synonyms(class_names, synonym_lists):
        prompts = [t.format(s) for s in synonyms for t in templates]
        emb = F.normalize(clip.encode_text(prompts).float(), dim=-1)  # (S·T)×D
        emb = F.normalize(emb.view(len(synonyms), len(templates), -1).mean(dim=1), dim=-1)  # S×D
        per_class.append(emb)
    p_max = max(e.shape[0] for e in per_class)
    padded = [torch.cat([e, e[:1].expand(p_max - e.shape[0], -1)]) for e in per_class]
    return torch.stack(padded)


def text_cache_key(model_name: str, weights_id: str, class_names: list[str],
                   synonym_lists: list[list[str]] | None = None) -> str:
    """sha256 hex of (model name, weights id, class list, templates[, synonym lists]); without
    synonym lists the key is the same as before they existed, so old cache entries stay valid."""
    fields = [model_name, weights_id, list(class_names), list(VILD_TEMPLATES)]
    if synonym_lists is not None:
        fields.append([list(lists) for lists in synonym_lists])
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def text_cache_file(cache_dir: str | os.PathLike, model_name: str, weights_id: str, class_names: list[str],
                    synonym_lists: list[list[str]] | None = None) -> Path:
    """``cache_dir/text-<model>-<key[:16]>.pt`` of a (model, weights, class list, synonym lists)."""
    key = text_cache_key(model_name, weights_id, class_names, synonym_lists)
    safe_model = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    return Path(cache_dir).expanduser() / f"text-{safe_model}-{key[:16]}.pt"


def cached_text_embeddings(clip, class_names: list[str], cache_dir: str | os.PathLike, model_name: str,
                           weights_id: str, synonym_lists: list[list[str]] | None = None) -> torch.Tensor:
    """C×P×D embeddings from :func:`text_cache_file`; built with :func:`build_text_embeddings`
    and written atomically (a plain dict, read back with ``weights_only=True``) when missing,
    unreadable or for another class list."""
    key = text_cache_key(model_name, weights_id, class_names, synonym_lists)
    file = text_cache_file(cache_dir, model_name, weights_id, class_names, synonym_lists)
    try:
        entry = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # missing or corrupt: regenerate
        entry = None
    if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("embeddings"), torch.Tensor) \
            and entry["embeddings"].shape[0] == len(class_names):
        return entry["embeddings"]
    embeddings = build_text_embeddings(clip, class_names, synonym_lists=synonym_lists).cpu().contiguous()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        torch.save({"key": key, "model": model_name, "weights": weights_id, "class_names": list(class_names),
                    "synonyms": vocabulary_synonyms(class_names, synonym_lists), "templates": list(VILD_TEMPLATES),
                    "embeddings": embeddings}, tmp)
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
    return embeddings
