"""dataset.class_names_file (per-class synonym lists, e.g. the official code's COCO vocabulary):
the tool that writes it from an official checkout (parsed, never run), strict validation, the
C×P_max×D text embeddings it gives, max over synonyms in the classifier, the cache key."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

from sambench_plugins.methods.ovsam.class_names_cli import main as make_class_names_main
from sambench_plugins.methods.ovsam.class_names_cli import make_class_names
from sambench.testing.coco_synthetic import COCO_CATEGORIES, write_synthetic_coco
from sambench.errors import ConfigError, DatasetError
from sambench_plugins.methods.ovsam.classifier import cosine_logits
from sambench_plugins.methods.ovsam.text_embeddings import VILD_TEMPLATES
from sambench_plugins.methods.ovsam.vocabulary import TextEmbeddingBank
from sambench.registry import DATASETS, load_plugins

load_plugins()
#: Made-up synonym strings in the official file's format (not the official lists).
SYNONYMS = {"person": "person,human_being,Folk", "car": "car/auto,motor car", "cat": "cat,kitty,feline,puss_or_moggy"}


class FakeClip:
    """encode_text: a fixed pseudo-random unit vector per prompt (so the tests can recompute it)."""

    name, weights_id, device = "fake", "w0", torch.device("cpu")

    @staticmethod
    def vector(prompt: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum(ord(ch) * (i + 1) for i, ch in enumerate(prompt)))
        return F.normalize(torch.randn(8, generator=g), dim=0)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.vector(p) for p in prompts])


def fake_official_checkout(root, marker):
    """A file shaped like the official seg/datasets/coco_ins_ov.py, with a side effect that
    would show if the tool ran it."""
    plain = [name for _, name in COCO_CATEGORIES]
    classes = [SYNONYMS.get(name, name) for name in plain]
    source = textwrap.dedent(f"""\
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("executed")
        CLASSES_ORIGINAL = {tuple(plain)!r}

        class CocoOVDataset:
            METAINFO = {{'classes': {tuple(classes)!r}, 'palette': [(1, 2, 3)]}}
        """)
    (root / "seg" / "datasets").mkdir(parents=True)
    (root / "seg" / "datasets" / "coco_ins_ov.py").write_text(source)
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return write_synthetic_coco(tmp_path_factory.mktemp("coco"), num_images=3)


@pytest.fixture()
def names_file(tmp_path, coco):
    marker = tmp_path / "executed.txt"
    repo = fake_official_checkout(tmp_path / "ovsam", marker)
    out = tmp_path / "coco_names.json"
    assert make_class_names_main(["--ovsam-repo", str(repo), "--out", str(out),
                                  "--ann-file", str(coco / "annotations/instances_val2017.json")]) == 0
    assert not marker.exists()  # parsed, never executed
    return out


def test_tool_writes_the_official_split_of_each_class_string(names_file):
    classes = json.loads(names_file.read_text())["classes"]
    assert len(classes) == 80 and list(classes)[:3] == ["person", "bicycle", "car"]
    # gen_cls.py's rule: '_or_' and '/' separate like ',', '_' is a space, lower-cased, stripped
    assert classes["person"] == ["person", "human being", "folk"]
    assert classes["car"] == ["car", "auto", "motor car"]
    assert classes["cat"] == ["cat", "kitty", "feline", "puss", "moggy"]
    assert classes["tv"] == ["tv"]


def test_tool_errors_name_the_file(tmp_path, capsys):
    assert make_class_names_main(["--ovsam-repo", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "coco_ins_ov.py" in capsys.readouterr().err
    (tmp_path / "seg" / "datasets").mkdir(parents=True)
    (tmp_path / "seg" / "datasets" / "coco_ins_ov.py").write_text("CLASSES_ORIGINAL = tuple(range(3))\n")
    with pytest.raises(DatasetError, match="coco_ins_ov.py: CLASSES_ORIGINAL is not a plain literal"):
        make_class_names(tmp_path, "coco", tmp_path / "x.json")


def test_dataset_reads_the_file_into_per_class_synonym_lists(names_file, coco):
    plain = DATASETS.get("coco_ov")(split="eval", root=str(coco))
    listed = DATASETS.get("coco_ov")(split="eval", root=str(coco), class_names_file=str(names_file))
    assert plain.synonym_lists is None and plain[0].meta["synonym_lists"] is None
    assert listed.class_names == plain.class_names and len(listed.synonym_lists) == 65  # 48 base + 17 novel
    assert listed.synonym_lists[listed.class_names.index("cat")] == SYNONYMS_SPLIT["cat"]
    assert listed[0].meta["synonym_lists"] == listed.synonym_lists
    train = DATASETS.get("coco_ov")(split="train", root=str(coco), class_names_file=str(names_file))
    assert len(train.synonym_lists) == 48 and train.synonym_lists[0] == SYNONYMS_SPLIT["person"]


SYNONYMS_SPLIT = {"person": ["person", "human being", "folk"], "cat": ["cat", "kitty", "feline", "puss", "moggy"]}


@pytest.mark.parametrize("content, message", [
    ("{not json", "cannot read class-names file"),
    ('["person"]', "expected a non-empty JSON object"),
    ('{"person": ["a"], "zebra crossing": ["b"]}', "entry 'zebra crossing' is neither a category id nor a category name"),
    ('{"1": ["a"], "person": ["b"]}', "category 1 \\('person'\\) is named twice"),
    ('{"person": []}', "entry 'person' must be a non-empty list of non-empty strings"),
    ('{"person": ["ok", " "]}', "entry 'person' must be a non-empty list"),
    ('{"person": ["human"]}', "lacks 64 class\\(es\\) of dataset 'coco_ov': 2 \\(bicycle\\)"),
])
def test_bad_files_are_one_line_errors_naming_the_file_and_entry(tmp_path, coco, content, message):
    file = tmp_path / "names.json"
    file.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        DATASETS.get("coco_ov")(split="eval", root=str(coco), class_names_file=str(file))
    assert str(file) in str(info.value) and "\n" not in str(info.value)


def test_a_missing_file_is_a_config_error(tmp_path, coco):
    with pytest.raises(ConfigError, match="dataset.class_names_file: file not found: .*nope.json"):
        DATASETS.get("coco")(split="eval", root=str(coco), class_names_file=str(tmp_path / "nope.json"))


def test_embeddings_are_padded_per_class_and_classify_by_the_best_synonym(names_file, coco, tmp_path):
    data = DATASETS.get("coco_ov")(split="eval", root=str(coco), class_names_file=str(names_file))
    names, lists = data.class_names, data.synonym_lists
    clip = FakeClip()
    bank = TextEmbeddingBank(clip, str(tmp_path / "cache"))
    text = bank(names, lists)
    p_max = max(map(len, lists))
    assert text.shape == (65, p_max, 8) and p_max == 5
    for c in (names.index("person"), names.index("cat"), names.index("tv")):
        synonyms = lists[c]
        for p in range(p_max):  # each synonym: normalised mean of its normalised template embeddings
            word = synonyms[p] if p < len(synonyms) else synonyms[0]  # padded with the first synonym
            expected = F.normalize(torch.stack([clip.vector(t.format(word)) for t in VILD_TEMPLATES]).mean(0), dim=0)
            assert torch.allclose(text[c, p], expected, atol=1e-6)
    cat = names.index("cat")
    region = text[cat, 3][None]  # equals the 4th synonym ("puss") of "cat"
    logits = cosine_logits(region, text, scale=100.0)
    assert logits.shape == (1, 66) and torch.isclose(logits[0, cat], torch.tensor(100.0))
    assert int(logits[0, :-1].argmax()) == cat and float(logits[0, -1]) == 0.0
    # the file is part of the cache key: a different entry than the plain names, both reused
    plain = bank(names)
    assert plain.shape == (65, 1, 8) and bank.cache_file(names, lists) != bank.cache_file(names)
    assert bank.cache_file(names, lists).is_file() and bank.cache_file(names).is_file()
    entry = torch.load(bank.cache_file(names, lists), weights_only=True)
    assert entry["synonyms"][cat] == SYNONYMS_SPLIT["cat"] and torch.equal(entry["embeddings"], text)
    assert torch.equal(TextEmbeddingBank(clip, str(tmp_path / "cache"))(names, lists), text)  # read back
