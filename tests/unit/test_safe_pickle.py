"""load_plain_pickle: plain data of every protocol loads; anything that could run code is refused
before it runs."""

from __future__ import annotations

import pickle

import pytest

from sambench.data import safe_pickle
from sambench.data.safe_pickle import load_plain_pickle
from sambench.errors import DatasetError

#: A Python-2 protocol-2 pickle as refer's refs files are written: str values are BINSTRINGs.
PY2_PICKLE = (
    b"\x80\x02]q\x00}q\x01(U\x06ref_idq\x02K\x05U\x03rawq\x03U\x05HELLOq\x04"
    b"U\x04longq\x05\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x01"
    b"U\x05wordsq\x06X\x05\x00\x00\x00caf\xc3\xa9q\x07"
    b"U\x06tokensq\x08]q\t(U\x01aq\nU\x01bq\x0beU\x03boxq\x0cG?\xf8\x00\x00\x00\x00\x00\x00K\x02\x86q\ru"
    b"a."
)


class FileCreator:
    """Unpickling this would create ``path`` through builtins.exec."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


class Harmless:
    """Pickles as a global + REDUCE of a harmless builtin (list)."""

    def __reduce__(self):
        return list, ((1, 2),)


def write(tmp_path, data: bytes, name: str = "refs(unc).p"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_loads_with_every_protocol(tmp_path, protocol):
    shared = [1, 2]
    data = [
        {"ref_id": 3, "sentences": [{"sent": "the cat", "sent_id": 7, "tokens": ["the", "cat"]}], "split": "testAB"},
        {"neg": -5, "big": 2**80, "pi": 3.25, "flags": (True, False, None), "a": shared, "b": shared},
    ]
    if protocol >= 4:  # protocols 0-2 pickle sets and bytes through a global + REDUCE
        data.append({"set": {1, 2}, "frozen": frozenset({"x"}), "bytes": b"\x00\xff", "empty": ()})
    path = write(tmp_path, pickle.dumps(data, protocol=protocol))
    loaded = load_plain_pickle(path)
    assert loaded == data
    assert loaded[1]["a"] is loaded[1]["b"]  # memo references are kept


def test_python2_protocol2_pickle_loads_with_str(tmp_path):
    loaded = load_plain_pickle(write(tmp_path, PY2_PICKLE))
    expected = {"ref_id": 5, "raw": "HELLO", "long": 2**56, "words": "café", "tokens": ["a", "b"], "box": (1.5, 2)}
    assert loaded == [expected]
    assert all(isinstance(key, str) for key in loaded[0]) and isinstance(loaded[0]["raw"], str)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_code_execution_is_refused_before_anything_runs(tmp_path, protocol):
    target = tmp_path / "pwned"
    path = write(tmp_path, pickle.dumps([{"ok": 1}, FileCreator(target)], protocol=protocol))
    with pytest.raises(DatasetError) as error:
        load_plain_pickle(path)
    message = str(error.value)
    assert "refs(unc).p tries to load the global" in message and "exec'" in message
    assert "only plain lists/dicts" in message and "JSON export" in message
    assert not target.exists()


def test_unpickler_refuses_globals_even_when_the_scan_is_bypassed(tmp_path, monkeypatch):
    """The second layer alone: find_class raises, so the payload never runs."""
    monkeypatch.setattr(safe_pickle, "_forbidden_opcode", lambda data: None)
    target = tmp_path / "pwned"
    path = write(tmp_path, pickle.dumps(FileCreator(target), protocol=2))
    with pytest.raises(DatasetError, match=r"tries to load the global '(__builtin__|builtins)\.exec'"):
        load_plain_pickle(path)
    assert not target.exists()


def test_persistent_ids_are_refused_by_both_layers(tmp_path, monkeypatch):
    import io

    class Persisting(pickle.Pickler):
        def persistent_id(self, obj):
            return "ext-1" if obj == "external" else None

    buffer = io.BytesIO()
    Persisting(buffer, protocol=2).dump(["external"])
    path = write(tmp_path, buffer.getvalue())
    with pytest.raises(DatasetError, match="opcode BINPERSID"):
        load_plain_pickle(path)
    monkeypatch.setattr(safe_pickle, "_forbidden_opcode", lambda data: None)
    with pytest.raises(DatasetError, match="persistent id"):
        load_plain_pickle(path)


@pytest.mark.parametrize(
    "data, found",
    [
        (pickle.dumps([Harmless()], protocol=4), "global 'builtins.list'"),  # STACK_GLOBAL + REDUCE
        (pickle.dumps({1, 2}, protocol=2), "global '__builtin__.set'"),      # GLOBAL + REDUCE
        (b"(lp0\n(tR.", "opcode REDUCE"),                                    # REDUCE without a global
        (b"\x80\x02]q\x00}b.", "opcode BUILD"),
        (b"\x80\x02\x82\x01.", "opcode EXT1"),
        (b"\x80\x05\x97.", "opcode NEXT_BUFFER"),
    ],
)
def test_object_building_opcodes_are_refused(tmp_path, data, found):
    with pytest.raises(DatasetError, match=found):
        load_plain_pickle(write(tmp_path, data))


@pytest.mark.parametrize(
    "data",
    [
        pickle.dumps([{"ref_id": 1, "sent": "a dog"}] * 3, protocol=2)[:-7],  # truncated
        b"",                                                                  # empty
        b"\xff\xfe not a pickle",                                             # garbage
    ],
)
def test_corrupt_or_truncated_files_are_clear_errors(tmp_path, data):
    path = write(tmp_path, data)
    with pytest.raises(DatasetError, match=r"refs\(unc\)\.p is not a complete pickle \(corrupt or truncated"):
        load_plain_pickle(path)


def test_missing_file_and_custom_hint(tmp_path):
    with pytest.raises(DatasetError, match="pickle file not found: .*nothing.p"):
        load_plain_pickle(tmp_path / "nothing.p")
    with pytest.raises(DatasetError, match="use fold0.json instead$"):
        load_plain_pickle(write(tmp_path, pickle.dumps(Harmless(), 2), "fold0.pkl"), hint="use fold0.json instead")
