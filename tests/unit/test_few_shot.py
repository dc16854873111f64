"""The few-shot wrapper (sambench/data/few_shot.py): the selection follows the documented protocol
(recomputed here from the label files, not with the code under test), the selection file's exact
content, the composition root as the only writer, and the dataset.few_shot config section."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from sambench import CONFIG_DIR
from sambench.cli import build
from sambench.data.few_shot import SELECTION_FILE, FewShotSubset
from sambench.testing.semantic_synthetic import write_synthetic_cityscapes
from sambench.errors import ConfigError
from sambench.registry import DATASETS, load_plugins

load_plugins()
Cityscapes = DATASETS.get("cityscapes")


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_synthetic_cityscapes(tmp_path_factory.mktemp("cs"), train_images=24, val_images=2, size=(32, 64))


def composed(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=["method=ssprompt", "dataset=cityscapes", f"dataset.root={root}", *overrides])


def expected_selection(root: Path, shots: int, seed: int) -> tuple[list[str], list[set[int]]]:
    """The protocol written out: images in (city, frame) order, classes read from the trainId
    PNGs; a class order shuffled with random.Random(seed); for each class its not-yet-selected
    holders shuffled with the same generator, taken until K selected images hold the class."""
    labels = sorted((root / "gtFine" / "train").rglob("*_gtFine_labelTrainIds.png"))
    names = [f"leftImg8bit/train/{p.parent.name}/{p.name.replace('_gtFine_labelTrainIds', '_leftImg8bit')}"
             for p in labels]
    presence = [set(np.unique(np.array(Image.open(p))).tolist()) - {255} for p in labels]
    rng = random.Random(seed)
    order = list(range(19))
    rng.shuffle(order)
    chosen: list[int] = []
    for c in order:
        pool = [i for i, p in enumerate(presence) if c in p and i not in chosen]
        rng.shuffle(pool)
        for i in pool:
            if sum(c in presence[j] for j in chosen) >= shots:
                break
            chosen.append(i)
    return [names[i] for i in sorted(chosen)], [presence[i] for i in sorted(chosen)]


@pytest.mark.parametrize("shots, seed", [(1, 0), (2, 0), (2, 7), (3, 1)])
def test_selection_follows_the_protocol_in_split_order(root, shots, seed):
    files, presence = expected_selection(root, shots, seed)
    data = FewShotSubset(Cityscapes(split="train", root=str(root)), shots=shots, seed=seed)
    samples = [data[i] for i in range(len(data))]
    assert [s.meta["file_name"] for s in samples] == files
    assert [s.index for s in samples] == list(range(len(files)))
    assert [set(np.unique(s.semantic.numpy()).tolist()) - {255} for s in samples] == presence
    assert data.class_names == data.dataset.class_names and data.root == data.dataset.root


def test_selection_file_content(root, tmp_path):
    files, presence = expected_selection(root, 2, 3)
    data = FewShotSubset(Cityscapes(split="train", root=str(root)), shots=2, seed=3)
    path = data.write(tmp_path / "run")
    all_classes = set().union(*expected_selection(root, 24, 0)[1])
    expected = {
        "dataset": "cityscapes", "split": "train", "root": str(root.resolve()), "shots": 2, "seed": 3,
        "images_in_split": 24, "num_selected": len(files), "num_classes": 19,
        "classes_covered": len(set().union(*presence)), "classes_in_split": len(all_classes), "source": None,
        "files": files,
    }
    assert path == tmp_path / "run" / SELECTION_FILE
    assert path.read_text() == json.dumps(expected, indent=2) + "\n"
    again = FewShotSubset(Cityscapes(split="train", root=str(root)), file=str(path), shots=5, seed=9)
    assert again.indices == data.indices
    assert again.selection == {**expected, "classes_covered": None, "classes_in_split": None, "source": str(path)}


def test_max_samples_applies_to_the_selection(root):
    whole = FewShotSubset(Cityscapes(split="train", root=str(root)), shots=2, seed=0)
    head = FewShotSubset(Cityscapes(split="train", root=str(root)), shots=2, seed=0, max_samples=3)
    assert head.indices == whole.indices[:3] and whole.indices[2] > 2  # not the split's first three
    assert head.selection == whole.selection  # the file lists the whole selection


def test_only_the_composition_root_writes_the_selection(root, tmp_path):
    run = tmp_path / "run"
    Cityscapes(split="train", root=str(root))  # constructors never touch a run folder
    assert not run.exists()
    cfg = composed(root, "dataset.few_shot.shots=2", "dataset.few_shot.seed=4", "dataset.max_samples=2")
    build.check_config(cfg)
    train = build.build_dataset(cfg, "train", run)
    files, _ = expected_selection(root, 2, 4)
    assert isinstance(train, FewShotSubset) and len(train) == 2
    assert json.loads((run / SELECTION_FILE).read_text())["files"] == files
    assert [train[i].meta["file_name"] for i in range(2)] == files[:2]
    evaluation = build.build_dataset(cfg, "eval", tmp_path / "other")
    assert not isinstance(evaluation, FewShotSubset) and len(evaluation) == 2 and not (tmp_path / "other").exists()
    whole = build.build_dataset(composed(root, "dataset.few_shot.shots=null"), "train", tmp_path / "none")
    assert len(whole) == 24 and not (tmp_path / "none").exists()
    reused = build.build_dataset(composed(root, f"dataset.few_shot.file={run / SELECTION_FILE}"), "train", tmp_path / "re")
    assert len(reused) == len(files) and reused.indices[:2] == train.indices


@pytest.mark.parametrize("override, message", [
    ("dataset.few_shot.shots=many", r"dataset.few_shot.shots='many': expected an integer or null"),
    ("+dataset.few_shot.count=3", r"unknown key dataset.few_shot.count; valid: shots, seed, file"),
    ("+dataset.shots=3", r"unknown key dataset.shots; valid: .*label_type"),
])
def test_few_shot_config_is_checked(root, override, message):
    with pytest.raises(ConfigError, match=message):
        build.check_config(composed(root, override))


def test_few_shot_on_a_dataset_without_the_protocol_is_refused():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=refcoco", "method=dit_layerwise", "+dataset.few_shot.shots=2"])
    with pytest.raises(ConfigError, match="dataset 'refcoco' has no few-shot protocol"):
        build.check_config(cfg)
