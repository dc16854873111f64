"""RefCOCO / RefCOCO+ / RefCOCOg refs files (the refer API layout): splits, loading, JSON export.

A refs file (``<data_root>/<dataset>/refs(<split_by>).p``) is a pickled list of dicts::

    {ref_id, ann_id, image_id, category_id, split, sent_ids, file_name,
     sentences: [{tokens: [str], raw: str, sent_id: int, sent: str}, ...]}

``raw`` is the annotator's text, ``sent`` its lower-cased normalised form. The pickle is read
with :func:`~sambench.data.safe_pickle.load_plain_pickle` (nothing in it is executed);
:func:`export_refs_json` writes the same list as ``refs(<split_by>).json``, which the
adapters read instead when it is present.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sambench.data.safe_pickle import load_plain_pickle
from sambench.errors import DatasetError
from sambench.files import write_json_atomic

#: Valid split names per (dataset folder, split_by), as published with each refs file.
REFER_SPLITS: dict[tuple[str, str], tuple[str, ...]] = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco", "google"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
    ("refcocog", "umd"): ("train", "val", "test"),
}
REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")
SENTENCE_KEYS = ("sent_id", "sent", "raw")


def refs_file(folder: Path, split_by: str, suffix: str) -> Path:
    """``folder/refs(<split_by>)<suffix>``, e.g. ``refcoco/refs(unc).p``."""
    return folder / f"refs({split_by}){suffix}"


def select_refs(refs: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
    """The refs of one split, as the refer API selects them (file order kept).

    ``testA`` / ``testB`` / ``testC`` keep every ref whose split contains that letter (so a
    ``testAB`` ref is in both testA and testB); ``test`` keeps every split containing "test";
    any other name (``train``, ``val``) must match exactly.
    """
    if split in ("testA", "testB", "testC"):
        return [ref for ref in refs if split[-1] in ref["split"]]
    if split == "test":
        return [ref for ref in refs if "test" in ref["split"]]
    return [ref for ref in refs if ref["split"] == split]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _ref_problem(ref: Any) -> str | None:
    if not isinstance(ref, dict):
        return f"is a {type(ref).__name__}, not a dict"
    missing = [key for key in REF_KEYS if key not in ref]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not all(_is_int(ref[key]) for key in ("ref_id", "ann_id", "image_id")):
        return "ref_id, ann_id and image_id must be ints"
    if not isinstance(ref["split"], str):
        return "'split' must be a string"
    sentences = ref["sentences"]
    if not isinstance(sentences, (list, tuple)) or not sentences:
        return "'sentences' must be a non-empty list"
    for sentence in sentences:
        if not isinstance(sentence, dict) or any(key not in sentence for key in SENTENCE_KEYS):
            return f"every sentence needs {', '.join(SENTENCE_KEYS)}"
        if not _is_int(sentence["sent_id"]) or not all(isinstance(sentence[k], str) for k in ("sent", "raw")):
            return "a sentence needs an int sent_id and string sent/raw"
    return None


def check_refs(refs: Any, source: Path) -> list[dict[str, Any]]:
    """Validate a loaded refs list (structure, unique ref and sentence ids); return it."""
    if not isinstance(refs, (list, tuple)):
        raise DatasetError(f"refs file {source} holds a {type(refs).__name__}; expected a list of ref dicts")
    ref_ids: set[int] = set()
    sent_ids: set[int] = set()
    for position, ref in enumerate(refs):
        problem = _ref_problem(ref)
        if problem:
            raise DatasetError(
                f"refs file {source}: ref #{position} {problem} (expected {{{', '.join(REF_KEYS)}}} with "
                f"sentences [{{{', '.join(SENTENCE_KEYS)}, tokens}}])"
            )
        if ref["ref_id"] in ref_ids:
            raise DatasetError(f"refs file {source}: ref_id {ref['ref_id']} appears twice")
        ref_ids.add(ref["ref_id"])
        for sentence in ref["sentences"]:
            if sentence["sent_id"] in sent_ids:
                raise DatasetError(f"refs file {source}: sent_id {sentence['sent_id']} appears twice")
            sent_ids.add(sentence["sent_id"])
    return list(refs)


def load_refs(path: Path) -> list[dict[str, Any]]:
    """Read and validate a refs file: ``.json`` as JSON, anything else as a plain-data pickle."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            with open(path, encoding="utf-8") as file:
                refs = json.load(file)
        except FileNotFoundError:
            raise DatasetError(f"refs file not found: {path}") from None
        except IsADirectoryError:
            raise DatasetError(f"refs file {path} is a folder; expected a JSON list of refs") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(f"refs file {path} is not valid UTF-8 JSON ({exc})") from None
        except RecursionError:
            raise DatasetError(f"refs file {path} is nested too deeply to be a list of refs") from None
        except OSError as exc:
            raise DatasetError(f"cannot read refs file {path} ({exc})") from None
    else:
        hint = (
            f"re-download it (refer API data), or read a JSON export instead: put {path.stem}.json beside it "
            f"(written by tools/export_refs_json.py from a trusted copy)"
        )
        refs = load_plain_pickle(path, hint=hint)
    return check_refs(refs, path)


def export_refs_json(pickle_path: Path, json_path: Path | None = None) -> Path:
    """Write the refs of ``pickle_path`` as JSON (same list of dicts; tuples become lists).

    ``json_path`` defaults to the pickle's name with ``.json``
    (``refcoco/refs(unc).p`` -> ``refcoco/refs(unc).json``). Returns the path written.
    """
    pickle_path = Path(pickle_path)
    json_path = Path(json_path) if json_path is not None else pickle_path.with_suffix(".json")
    if json_path.resolve() == pickle_path.resolve():
        raise DatasetError(f"the JSON export would overwrite its source {pickle_path}; choose another name")
    write_json_atomic(json_path, load_refs(pickle_path), indent=None)
    return json_path
