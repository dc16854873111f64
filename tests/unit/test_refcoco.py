"""RefCOCO / RefCOCO+ / RefCOCOg adapters on the synthetic dataset in the real refer file format."""

from __future__ import annotations

import inspect
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from sambench.testing import REPO, run_tool
from omegaconf import OmegaConf

from sambench.tasks import REFERRING
from sambench.testing.refcoco_synthetic import COLOURS, write_synthetic_refcoco
from sambench.data.refer_json import export_refs_json, select_refs
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, load_plugins

load_plugins()
RefCoco = DATASETS.get("refcoco")
REFS = "refs(unc).p"


@pytest.fixture
def root(tmp_path):
    return write_synthetic_refcoco(tmp_path / "refer", num_images=12, seed=0)


def read_refs(root, dataset="refcoco", name=REFS):
    with open(root / dataset / name, "rb") as file:
        return pickle.load(file)  # trusted: written by the test itself


def read_instances(root, dataset="refcoco"):
    return json.loads((root / dataset / "instances.json").read_text())


def write_instances(root, data, dataset="refcoco"):
    (root / dataset / "instances.json").write_text(json.dumps(data))


def samples_equal(a, b) -> bool:
    return (
        np.array_equal(a.image, b.image) and torch.equal(a.masks, b.masks) and torch.equal(a.boxes, b.boxes)
        and torch.equal(a.class_ids, b.class_ids) and a.texts == b.texts and a.meta == b.meta
    )


def test_train_split_gives_one_sample_per_ref_with_all_sentences(root):
    refs = [r for r in read_refs(root) if r["split"] == "train"]
    data = RefCoco(split="train", root=str(root))
    assert data.TASKS == (REFERRING,) and len(data) == len(refs) >= 12
    for index, ref in enumerate(refs):
        sample = data[index]
        assert sample.index == index and sample.texts == [s["sent"] for s in ref["sentences"]]
        assert len(sample.texts) == 2
        assert sample.meta == {
            "ref_id": ref["ref_id"], "ann_id": ref["ann_id"], "image_id": ref["image_id"],
            "file_name": f"COCO_train2014_{ref['image_id']:012d}.jpg", "sent_ids": ref["sent_ids"],
        }


def test_eval_split_gives_one_sample_per_sentence_in_ref_order(root):
    refs = [r for r in read_refs(root) if r["split"] == "val"]
    data = RefCoco(split="eval", root=str(root))
    expected = [(ref, s) for ref in refs for s in ref["sentences"]]
    assert len(data) == len(expected) >= 4
    for index, (ref, sentence) in enumerate(expected):
        sample = data[index]
        assert sample.texts == [sentence["sent"]]
        assert sample.meta["ref_id"] == ref["ref_id"] and sample.meta["sent_ids"] == ref["sent_ids"]
        assert sample.meta["sent_id"] == sentence["sent_id"]
        assert sample.meta["prediction_path"] == str(sentence["sent_id"])
    raw = RefCoco(split="eval", root=str(root), text_field="raw")
    assert raw[0].texts == [expected[0][1]["raw"]] and raw[0].texts[0].isupper()


def test_masks_boxes_and_classes_match_the_annotations(root):
    anns = {a["id"]: a for a in read_instances(root)["annotations"]}
    data = RefCoco(split="train", root=str(root))
    assert data.class_names == ["square", "circle", "triangle"]
    for index in range(len(data)):
        sample = data[index]
        height, width = sample.size
        assert sample.image.dtype == np.uint8 and sample.image.shape == (96, 128, 3)
        assert sample.masks.shape == (1, height, width) and sample.masks.dtype == torch.bool
        assert sample.boxes.shape == (1, 4) and sample.boxes.dtype == torch.float32
        assert sample.class_ids.dtype == torch.int64 and sample.class_ids.shape == (1,)
        ann = anns[sample.meta["ann_id"]]
        mask = sample.masks[0].numpy()
        area = int(mask.sum())
        assert abs(area - ann["area"]) < 0.15 * ann["area"] + 10
        x1, y1, x2, y2 = sample.boxes[0].tolist()
        assert [x1, y1, x2 - x1, y2 - y1] == pytest.approx(ann["bbox"], abs=1e-3)
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x1 - 1 and xs.max() <= x2 + 1 and ys.min() >= y1 - 1 and ys.max() <= y2 + 1
        # learnable: the masked pixels have the colour and the shape the first sentence names
        colour = sample.texts[0].split()[1]
        mean = sample.image[mask].mean(axis=0)
        assert np.abs(mean - COLOURS[colour]).max() < 40
        assert data.class_names[int(sample.class_ids[0])] in sample.texts[0]


def test_location_words_name_the_shape_position(root):
    data = RefCoco(split="train", root=str(root))
    for index in range(len(data)):
        sample = data[index]
        centre = float(np.nonzero(sample.masks[0].numpy())[1].mean()) / sample.size[1]
        where = sample.texts[1].split()[-1]
        assert {"left": centre < 0.5, "right": centre > 0.5, "middle": 0.3 < centre < 0.7}[where]


def test_split_selection_follows_the_refer_api(root):
    refs = [{"split": s, "id": i} for i, s in enumerate(["train", "val", "testA", "testB", "testAB", "test", "testC"])]
    assert [r["id"] for r in select_refs(refs, "testA")] == [2, 4]
    assert [r["id"] for r in select_refs(refs, "testB")] == [3, 4]
    assert [r["id"] for r in select_refs(refs, "test")] == [2, 3, 4, 5, 6]
    assert [r["id"] for r in select_refs(refs, "val")] == [1]

    all_refs = read_refs(root)
    first_train = next(r for r in all_refs if r["split"] == "train")
    first_train["split"] = "testAB"
    (root / "refcoco" / "refs(unc).json").write_text(json.dumps(all_refs))
    for letter in "AB":
        data = RefCoco(split="eval", root=str(root), eval_split=f"test{letter}")
        ids = {data[i].meta["ref_id"] for i in range(len(data))}
        assert first_train["ref_id"] in ids
        assert ids == {r["ref_id"] for r in all_refs if letter in r["split"]}
    train = RefCoco(split="train", root=str(root))
    assert first_train["ref_id"] not in {train[i].meta["ref_id"] for i in range(len(train))}


def test_refcocog_umd_test_split(tmp_path):
    root = write_synthetic_refcoco(tmp_path, num_images=8, dataset="refcocog", split_by="umd")
    data = DATASETS.get("refcocog")(split="eval", root=str(root), eval_split="test")
    expected = [s["sent_id"] for r in read_refs(root, "refcocog", "refs(umd).p") if "test" in r["split"]
                for s in r["sentences"]]
    assert [data[i].meta["sent_id"] for i in range(len(data))] == expected and len(expected) >= 4
    not_a_split = r"eval_split 'testA' is not a split of refcocog/umd.*valid: train, val, test$"
    with pytest.raises(ConfigError, match=not_a_split):
        DATASETS.get("refcocog")(split="eval", root=str(root), eval_split="testA")


def test_invalid_split_choices_list_the_valid_ones(root):
    suggestion = r"eval_split 'testa'.*\(did you mean 'testA'\?\); valid: train, val, testA, testB"
    with pytest.raises(ConfigError, match=suggestion):
        RefCoco(split="eval", root=str(root), eval_split="testa")
    with pytest.raises(ConfigError, match="train_split 'test' is not a split of refcoco/unc"):
        RefCoco(split="train", root=str(root), train_split="test")
    with pytest.raises(ConfigError, match="unknown dataset/split_by 'refcoco/umd'; valid: refcoco/unc"):
        RefCoco(split="eval", root=str(root), split_by="umd")
    with pytest.raises(ConfigError, match="refs_format must be one of auto, pickle, json"):
        RefCoco(split="eval", root=str(root), refs_format="yaml")
    with pytest.raises(ConfigError, match="text_field must be one of sent, raw"):
        RefCoco(split="eval", root=str(root), text_field="tokens")


def test_json_export_round_trip_gives_identical_samples(root, tmp_path):
    json_path = export_refs_json(root / "refcoco" / REFS)
    assert json_path == root / "refcoco" / "refs(unc).json"
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(read_refs(root)))
    for split in ("train", "eval"):
        from_pickle = RefCoco(split=split, root=str(root), refs_format="pickle")
        from_json = RefCoco(split=split, root=str(root), refs_format="json")
        assert from_pickle.refs_path.suffix == ".p" and from_json.refs_path.suffix == ".json"
        assert len(from_pickle) == len(from_json)
        assert all(samples_equal(from_pickle[i], from_json[i]) for i in range(len(from_json)))


def test_auto_prefers_the_json_export(root):
    refs = read_refs(root)
    refs[0]["sentences"][0]["sent"] = "read from the json"
    (root / "refcoco" / "refs(unc).json").write_text(json.dumps(refs))
    assert RefCoco(split="train", root=str(root))[0].texts[0] == "read from the json"
    assert RefCoco(split="train", root=str(root), refs_format="pickle")[0].texts[0] != "read from the json"
    (root / "refcoco" / REFS).unlink()
    assert RefCoco(split="train", root=str(root), refs_format="auto")[0].texts[0] == "read from the json"


def test_missing_files_say_what_to_download(root, tmp_path):
    with pytest.raises(DatasetError, match=r"refs file not found: .*refs\(unc\)\.json"):
        RefCoco(split="eval", root=str(root), refs_format="json")
    (root / "refcoco" / REFS).unlink()
    not_found = r"refs file not found: .*refs\(unc\)\.p or refs\(unc\)\.json.*lichengunc/refer"
    with pytest.raises(DatasetError, match=not_found):
        RefCoco(split="eval", root=str(root))
    with pytest.raises(DatasetError, match="dataset root not found: .*nowhere.*refcoco.zip"):
        RefCoco(split="eval", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="needs dataset.root"):
        RefCoco(split="eval", root=None)
    with pytest.raises(DatasetError, match="refs file not found: .*refcoco\\+"):
        DATASETS.get("refcocop")(split="eval", root=str(root))
    (root / "refcoco" / "instances.json").unlink()
    write_synthetic_refcoco(root, num_images=4, dataset="refcoco")
    shutil.rmtree(root / "images")
    with pytest.raises(DatasetError, match="image folder not found: .*train2014"):
        RefCoco(split="eval", root=str(root))


def test_escaping_file_names_fail_at_construction(root):
    data = read_instances(root)
    val_image = {r["image_id"] for r in read_refs(root) if r["split"] == "val"}.pop()
    next(i for i in data["images"] if i["id"] == val_image)["file_name"] = "../../../etc/passwd"
    write_instances(root, data)
    with pytest.raises(DatasetError, match="escapes the dataset root"):
        RefCoco(split="eval", root=str(root))
    assert len(RefCoco(split="train", root=str(root))) > 0  # only the refs of the split are checked


def test_refs_and_instances_must_agree(root):
    data = read_instances(root)
    first = read_refs(root)[0]
    data["annotations"] = [a for a in data["annotations"] if a["id"] != first["ann_id"]]
    write_instances(root, data)
    with pytest.raises(DatasetError, match=rf"ref {first['ref_id']} in .*refs\(unc\)\.p names ann_id "
                                           rf"{first['ann_id']}, which .*instances\.json lacks"):
        RefCoco(split="train", root=str(root))


def test_bad_segmentations_name_the_annotation(root):
    data = read_instances(root)
    first = read_refs(root)[0]
    next(a for a in data["annotations"] if a["id"] == first["ann_id"])["segmentation"] = [[1, 2, 3, 4, 5]]
    write_instances(root, data)
    with pytest.raises(DatasetError, match=rf"annotation {first['ann_id']} in .*instances\.json.*5 coordinates"):
        RefCoco(split="train", root=str(root))


def test_malicious_refs_pickle_is_refused(root):
    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(root / 'pwned')!r}, 'w').close()",)

    (root / "refcoco" / REFS).write_bytes(pickle.dumps([Payload()], protocol=2))
    with pytest.raises(DatasetError, match=r"refs\(unc\)\.p tries to load the global .*exec.*refs\(unc\)\.json"):
        RefCoco(split="train", root=str(root))
    assert not (root / "pwned").exists()


def test_malformed_refs_are_clear_errors(root):
    refs = read_refs(root)
    del refs[2]["sentences"][0]["sent_id"]
    (root / "refcoco" / "refs(unc).json").write_text(json.dumps(refs))
    with pytest.raises(DatasetError, match=r"refs\(unc\)\.json: ref #2 every sentence needs sent_id, sent, raw"):
        RefCoco(split="train", root=str(root))


def test_max_samples_keeps_the_first(root):
    full = RefCoco(split="eval", root=str(root))
    short = RefCoco(split="eval", root=str(root), max_samples=3)
    assert len(short) == 3 and [short[i].meta for i in range(3)] == [full[i].meta for i in range(3)]
    with pytest.raises(ConfigError, match="max_samples must be >= 1"):
        RefCoco(split="eval", root=str(root), max_samples=0)


def test_registry_names_and_defaults(tmp_path):
    for name, folder, split_by in [("refcoco", "refcoco", "unc"), ("refcocop", "refcoco+", "unc"),
                                   ("refcocog", "refcocog", "umd")]:
        cls = DATASETS.get(name)
        defaults = inspect.signature(cls).parameters
        assert cls.TASKS == (REFERRING,) and (defaults["dataset"].default, defaults["split_by"].default) == (folder, split_by)
        root = write_synthetic_refcoco(tmp_path / name, num_images=8, dataset=folder, split_by=split_by)
        for split in ("train", "eval"):
            data = cls(split=split, root=str(root))
            assert data.dataset == folder and len(data) >= 4
        if name == "refcocop":  # RefCOCO+ has no location words
            assert not any(w in t for i in range(len(data)) for t in data[i].texts for w in ("left", "right"))


def test_configs_list_every_constructor_argument():
    arguments = set(inspect.signature(RefCoco.__init__).parameters) - {"self", "split"}
    for name, folder in [("refcoco", "refcoco"), ("refcocop", "refcoco+"), ("refcocog", "refcocog")]:
        cfg = OmegaConf.load(REPO / "conf" / "dataset" / f"{name}.yaml")
        assert cfg.name == name and cfg.dataset == folder
        assert set(cfg) - {"name"} == arguments
        assert (cfg.split_by, cfg.eval_split) == (inspect.signature(DATASETS.get(name)).parameters["split_by"].default, "val")


def test_synthetic_dataset_is_deterministic_and_covers_every_split(tmp_path):
    first = write_synthetic_refcoco(tmp_path / "a", num_images=8, seed=3)
    second = write_synthetic_refcoco(tmp_path / "b", num_images=8, seed=3)
    other = write_synthetic_refcoco(tmp_path / "c", num_images=8, seed=4)
    files = ["refcoco/refs(unc).p", "refcoco/instances.json",
             "images/mscoco/images/train2014/COCO_train2014_000000001000.jpg"]
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / files[1]).read_bytes() != (other / files[1]).read_bytes()
    splits = [r["split"] for r in read_refs(first)]
    assert all(splits.count(s) >= 2 for s in ("train", "val", "testA", "testB"))
    assert splits.count("train") > splits.count("val")
    with pytest.raises(ConfigError, match="num_images must be >= 4"):
        write_synthetic_refcoco(tmp_path / "d", num_images=3)


def test_tools_make_sample_and_export_json(tmp_path):
    out = tmp_path / "refer"
    made = run_tool("tools/make_refcoco_sample.py", str(out), "--num-images", "8", "--seed", "1")
    assert made.returncode == 0, made.stderr
    pickle_path = out / "refcoco" / REFS
    assert pickle_path.is_file() and len(list((out / "images/mscoco/images/train2014").glob("*.jpg"))) == 8
    exported = run_tool("tools/export_refs_json.py", str(pickle_path))
    assert exported.returncode == 0, exported.stderr
    assert json.loads((out / "refcoco" / "refs(unc).json").read_text()) == json.loads(json.dumps(read_refs(out)))
    custom = run_tool("tools/export_refs_json.py", str(pickle_path), str(tmp_path / "mine.json"))
    assert custom.returncode == 0 and (tmp_path / "mine.json").is_file()
    missing = run_tool("tools/export_refs_json.py", str(tmp_path / "absent.p"))
    assert missing.returncode == 2 and "error: pickle file not found" in missing.stderr
