"""The official Open-Vocabulary SAM vocabularies, read from a user's checkout of its repository.

The official OV-SAM repository (methods/ovsam/README.md; S-Lab License 1.0, non-commercial) builds
its text embeddings from class-name strings that carry synonym lists (``tools/gen_cls.py``
splits each string at ``_or_`` / ``/`` / ``,``, ``_`` -> space, lower-case). sambench does not
ship those lists; these readers take them from the user's checkout, **without running it**
(``ast`` + ``ast.literal_eval``), and return ``{category name: [synonyms]}`` for
``dataset.class_names_file``:

- ``coco``: ``seg/datasets/coco_ins_ov.py``: ``CocoOVDataset.METAINFO['classes']`` (80 strings,
  up to 17 synonyms: the official [80, 17, 768] RN50x16 cache), paired in order with the plain
  COCO names ``CLASSES_ORIGINAL`` of the same file;
- ``lvis``: ``ext/class_names/lvis_list.py``: ``LVIS_CLASSES`` (the LVIS v1 categories with their
  ``synonyms``). The official LVIS runs do **not** use these (mmdet's ``LVISV1Dataset`` plain
  names are its vocabulary, which is sambench's default); this is a variant.
"""

from __future__ import annotations

import ast
from pathlib import Path

from sambench.data.open_vocab import synonyms
from sambench.errors import DatasetError

#: Official file per source, relative to the repository root.
SOURCES = {"coco": "seg/datasets/coco_ins_ov.py", "lvis": "ext/class_names/lvis_list.py"}


def _parse(file: Path) -> ast.Module:
    if not file.is_file():
        raise DatasetError(f"official vocabulary file not found: {file} (a checkout of the official OV-SAM repository @ 137d2c2?)")
    try:
        return ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise DatasetError(f"cannot parse {file}: {exc}") from None


def _assigned(body: list[ast.stmt], name: str, file: Path) -> ast.expr:
    """The value node of ``name = ...`` among ``body``'s statements."""
    for node in body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return node.value
    raise DatasetError(f"{file}: no assignment to {name} (not the expected official file?)")


def _literal(node: ast.expr, what: str, file: Path):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise DatasetError(f"{file}: {what} is not a plain literal") from None


def _strings(value, what: str, file: Path) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{file}: {what} must be a non-empty list of strings")
    return list(value)


def _split(entry: str, what: str, file: Path) -> list[str]:
    names = synonyms(entry)
    if not names:
        raise DatasetError(f"{file}: {what} {entry!r} has no name left after splitting")
    return names


def coco_class_names(repo: str | Path) -> dict[str, list[str]]:
    """``{COCO name: synonyms}`` (80 classes, COCO order) from ``seg/datasets/coco_ins_ov.py``."""
    file = Path(repo).expanduser() / SOURCES["coco"]
    module = _parse(file)
    plain = _strings(_literal(_assigned(module.body, "CLASSES_ORIGINAL", file), "CLASSES_ORIGINAL", file),
                     "CLASSES_ORIGINAL", file)
    dataset = next((n for n in module.body if isinstance(n, ast.ClassDef) and n.name == "CocoOVDataset"), None)
    if dataset is None:
        raise DatasetError(f"{file}: no class CocoOVDataset (not the expected official file?)")
    meta = _literal(_assigned(dataset.body, "METAINFO", file), "CocoOVDataset.METAINFO", file)
    if not isinstance(meta, dict):
        raise DatasetError(f"{file}: CocoOVDataset.METAINFO is not a dict")
    classes = _strings(meta.get("classes"), "CocoOVDataset.METAINFO['classes']", file)
    if len(classes) != len(plain) or len(set(plain)) != len(plain):
        raise DatasetError(f"{file}: {len(classes)} METAINFO classes for {len(plain)} CLASSES_ORIGINAL names "
                           "(expected the same 80 distinct COCO classes)")
    return {name: _split(entry, "class", file) for name, entry in zip(plain, classes)}


def lvis_class_names(repo: str | Path) -> dict[str, list[str]]:
    """``{LVIS name: synonyms}`` (1203 classes) from ``ext/class_names/lvis_list.py``; each
    synonym split like a class name, duplicates dropped (the name's own words first)."""
    file = Path(repo).expanduser() / SOURCES["lvis"]
    categories = _literal(_assigned(_parse(file).body, "LVIS_CLASSES", file), "LVIS_CLASSES", file)
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"{file}: LVIS_CLASSES must be a non-empty list of categories")
    out: dict[str, list[str]] = {}
    for k, category in enumerate(categories):
        if not isinstance(category, dict) or not isinstance(category.get("name"), str):
            raise DatasetError(f"{file}: LVIS_CLASSES[{k}] needs a 'name'")
        name = category["name"]
        if name in out:
            raise DatasetError(f"{file}: LVIS_CLASSES names {name!r} twice")
        entries = [name] + _strings(category.get("synonyms") or [name], f"LVIS_CLASSES[{k}]['synonyms']", file)
        names = [s for entry in entries for s in _split(entry, "synonym", file)]
        out[name] = list(dict.fromkeys(names))
    return out


READERS = {"coco": coco_class_names, "lvis": lvis_class_names}
