"""DAVIS 2017 adapter on a generated copy of the real layout, its errors, the DAVIS-palette frame
PNG writer and the evaluation loop on video predictions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from sambench import tasks
from sambench.cli.build import build_dataset
from sambench.engine.evaluate import evaluate, overlay_item
from sambench.errors import ConfigError, DatasetError
from sambench.evaluation.prediction_files import VIDEO_LABELS, davis_palette, write_overlay
from sambench.evaluation.video import VideoObjectEvaluator, score_sequence
from sambench.registry import DATASETS, load_plugins
from sambench.structures import Batch, Prediction
from sambench.testing import REPO
from sambench.testing.davis_synthetic import write_davis

load_plugins()
Davis = DATASETS.get("davis2017")
SEQUENCES = {"swan": (6, 48, 64, 1), "dogs": (5, 40, 56, 2), "cars": (4, 32, 40, 3)}


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    return write_davis(tmp_path_factory.mktemp("davis") / "DAVIS", SEQUENCES, unannotated=(1,), lists=("val", "train"))


def test_reads_the_generated_layout_as_pil_does(davis_root):
    data = Davis(split="eval", root=str(davis_root))
    assert data.TASKS == (tasks.VIDEO_OBJECT,) and len(data) == 3
    for index, (seq, (t, h, w, count)) in enumerate(SEQUENCES.items()):
        sample = data[index]
        assert tasks.VIDEO_OBJECT.missing_fields(sample) == []
        names = [f"{i:05d}" for i in range(t)]
        assert sample.meta == {"name": seq, "sequence": seq, "prediction_path": seq, "frame_names": names,
                               "object_ids": list(range(1, count + 1)), "concept": seq}
        assert len(sample.frames) == t and sample.frame_labels.shape == (t, h, w)
        assert sample.frame_labels.dtype == torch.uint8
        for i, name in enumerate(names):
            with Image.open(davis_root / "JPEGImages" / "480p" / seq / f"{name}.jpg") as img:
                np.testing.assert_array_equal(sample.frames[i], np.array(img.convert("RGB"), dtype=np.uint8))
            png = davis_root / "Annotations" / "480p" / seq / f"{name}.png"
            if i == 1:  # written without an annotation: zeros, as Personalize-SAM's loader
                assert not png.exists() and not sample.frame_labels[i].any()
            else:
                with Image.open(png) as img:
                    assert img.mode == "P"
                    np.testing.assert_array_equal(sample.frame_labels[i].numpy(), np.array(img))
        np.testing.assert_array_equal(sample.image, sample.frames[0])
        first = sample.frame_labels[0].numpy()
        assert (first == 255).any()  # the generated void patch
        assert sample.masks.shape == (count, h, w) and sample.masks.dtype == torch.bool
        assert [ref.name for ref in sample.references] == [f"{seq}/{k}" for k in range(1, count + 1)]
        for k, (ref, mask) in enumerate(zip(sample.references, sample.masks), start=1):
            np.testing.assert_array_equal(mask.numpy(), first == k)
            assert ref.mask_rgb.dtype == np.uint8 and ref.mask_rgb.shape == (h, w, 3)
            np.testing.assert_array_equal(ref.mask_rgb, np.repeat((first == k)[..., None], 3, axis=-1) * 255)
            np.testing.assert_array_equal(ref.mask, first == k)
            np.testing.assert_array_equal(ref.image, sample.image)


def test_frames_are_lazy_picklable_and_sliceable(davis_root):
    frames = Davis(split="eval", root=str(davis_root))[0].frames
    copy = pickle.loads(pickle.dumps(frames))
    assert len(copy) == 6 and all(isinstance(p, type(frames.paths[0])) for p in copy.paths)
    np.testing.assert_array_equal(copy[-1], frames[5])
    assert len(frames[1:3]) == 2
    np.testing.assert_array_equal(frames[1:3][0], frames[1])
    assert len(list(iter(frames))) == 6


def test_moving_objects_move(davis_root):
    labels = Davis(split="eval", root=str(davis_root))[1].frame_labels.numpy()
    for k in (1, 2):
        centres = [np.argwhere(frame == k).mean(0) for frame in labels[[0, 2, 4]]]
        assert np.abs(centres[0] - centres[1]).max() > 0.4 and np.abs(centres[0] - centres[2]).max() > 1


def test_knobs_lists_sequences_and_resolution(davis_root):
    assert Davis(split="eval", root=str(davis_root), sequences=["cars", "swan"]).sequences == ["swan", "cars"]
    assert Davis(split="eval", root=str(davis_root), sequences="dogs").sequences == ["dogs"]
    with pytest.raises(DatasetError, match="sequence 'dog' is not in the DAVIS list val.txt.*did you mean 'dogs'"):
        Davis(split="eval", root=str(davis_root), sequences=["dog"])
    (davis_root / "ImageSets" / "2017" / "mini.txt").write_text("dogs\n\n", encoding="utf-8")
    assert Davis(split="train", root=str(davis_root), train_split="mini").sequences == ["dogs"]
    assert Davis(split="eval", root=str(davis_root), eval_split="mini").sequences == ["dogs"]
    with pytest.raises(DatasetError, match=r"JPEGImages/Full-Resolution.*resolution Full-Resolution"):
        Davis(split="eval", root=str(davis_root), resolution="Full-Resolution")
    with pytest.raises(ConfigError, match="did you mean '480p'"):
        Davis(split="eval", root=str(davis_root), resolution="480")


def test_config_builds_the_dataset(davis_root, tmp_path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["dataset=davis2017", f"dataset.root={davis_root}", "dataset.sequences=[dogs]"])
    data = build_dataset(cfg, "eval", tmp_path)
    assert data.sequences == ["dogs"] and data.resolution == "480p" and data.list_name == "val"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["dataset=davis2017", f"dataset.root={davis_root}", "split=train"])
    assert build_dataset(cfg, "eval", tmp_path).list_name == "train"  # split=<name> picks the list


# --------------------------------------------------------------------------- errors


def test_missing_list_names_the_file_and_the_lists_there(tmp_path):
    root = write_davis(tmp_path / "DAVIS", {"a": (3, 16, 16, 1)})
    with pytest.raises(DatasetError, match=r"sequence list not found: .*ImageSets/2017/test-dev.txt .*lists there: val"):
        Davis(split="eval", root=str(root), eval_split="test-dev")
    with pytest.raises(DatasetError, match="needs dataset.root"):
        Davis(split="eval", root="")


def test_missing_sequence_folder_and_empty_folder(tmp_path):
    root = write_davis(tmp_path / "DAVIS", {"a": (3, 16, 16, 1)})
    (root / "ImageSets" / "2017" / "val.txt").write_text("a\nghost\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"frame folder not found: .*480p/ghost \(sequence 'ghost' of val.txt"):
        Davis(split="eval", root=str(root))
    (root / "JPEGImages" / "480p" / "ghost").mkdir()
    with pytest.raises(DatasetError, match=r"no frames in .*ghost"):
        Davis(split="eval", root=str(root))
    (root / "ImageSets" / "2017" / "val.txt").write_text("a\n", encoding="utf-8")
    (root / "Annotations" / "480p" / "a" / "00000.png").unlink()
    with pytest.raises(DatasetError, match=r"first-frame annotation not found: .*a/00000.png"):
        Davis(split="eval", root=str(root))


def test_size_mismatch_is_refused(tmp_path):
    root = write_davis(tmp_path / "DAVIS", {"a": (3, 16, 16, 1)})
    frame = root / "JPEGImages" / "480p" / "a" / "00001.jpg"
    Image.fromarray(np.zeros((16, 20, 3), np.uint8)).save(frame)
    data = Davis(split="eval", root=str(root))
    with pytest.raises(DatasetError, match=r"frame .*00001.jpg is 16x20 but the first annotation of 'a' is 16x16"):
        data[0]
    root = write_davis(tmp_path / "D2", {"a": (3, 16, 16, 1)})
    label = root / "Annotations" / "480p" / "a" / "00002.png"
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(label)
    with pytest.raises(DatasetError, match=r"annotation .*00002.png is 12x16 but the first annotation of 'a' is 16x16"):
        Davis(split="eval", root=str(root))[0]


def test_rgb_annotation_and_empty_first_frame_are_refused(tmp_path):
    root = write_davis(tmp_path / "DAVIS", {"a": (3, 16, 16, 1)})
    label = root / "Annotations" / "480p" / "a" / "00000.png"
    with Image.open(label) as img:
        rgb = img.convert("RGB")
    rgb.save(label)
    with pytest.raises(DatasetError, match=r"annotation .*00000.png has mode RGB; expected an indexed"):
        Davis(split="eval", root=str(root))[0]
    Image.fromarray(np.where(np.arange(16)[None] < 2, 255, 0).repeat(16, 0).astype(np.uint8)).save(label)  # 'L', void only
    with pytest.raises(DatasetError, match="holds no object id"):
        Davis(split="eval", root=str(root))[0]


# --------------------------------------------------------------------------- writer, overlays, loop


def test_palette_is_the_davis_one():
    palette = np.array(davis_palette()).reshape(256, 3)
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[255].tolist() == [224, 224, 192]


def test_frame_writer_writes_pngs_the_toolkit_reads(davis_root, tmp_path):
    sample = Davis(split="eval", root=str(davis_root))[1]
    predicted = sample.frame_labels.clone()
    predicted[predicted == 255] = 0
    predicted[3] = 0  # lose everything in one frame
    VIDEO_LABELS(sample, Prediction(index=1, frame_labels=predicted), tmp_path)
    written = sorted(p.name for p in (tmp_path / "dogs").iterdir())
    assert written == [f"{t:05d}.png" for t in range(5)]
    read = []
    for name in written:
        with Image.open(tmp_path / "dogs" / name) as img:  # the toolkit's Results._read_mask
            assert img.mode == "P" and img.getpalette()[:12] == davis_palette()[:12]
            read.append(np.array(img))
    np.testing.assert_array_equal(np.stack(read), predicted.numpy())
    truth = sample.frame_labels.numpy()
    assert score_sequence(truth, np.stack(read)) == score_sequence(truth, predicted.numpy())


class Replay(torch.nn.Module):
    """Predicts the ground truth with void removed, object 2 dropped in the middle frame."""

    def predict(self, batch):
        out = []
        for sample in batch:
            labels = sample.frame_labels.clone()
            labels[labels == 255] = 0
            labels[len(labels) // 2][labels[len(labels) // 2] == 2] = 0
            out.append(Prediction(index=sample.index, frame_labels=labels, fallbacks=1))
        return out


def test_evaluation_loop_writes_frames_and_middle_frame_overlays(davis_root, tmp_path):
    data = Davis(split="eval", root=str(davis_root))
    loader = [Batch([data[0], data[1]]), Batch([data[2]])]
    metrics, overlays = evaluate(
        Replay(), loader, VideoObjectEvaluator(), device=torch.device("cpu"), writer=tasks.VIDEO_OBJECT.writer,
        predictions_dir=tmp_path / "predictions", overlays_dir=tmp_path / "vis", num_overlays=2,
    )
    assert metrics["num_sequences"] == 3 and metrics["num_objects"] == 6 and metrics["fallbacks"] == 3
    assert metrics["per_object"]["swan_1"]["J-Mean"] == pytest.approx(100.0)
    assert metrics["per_object"]["dogs_2"]["J-Mean"] < 100.0  # dropped in frame 2
    for seq, (t, _, _, _) in SEQUENCES.items():
        assert sorted(p.name for p in (tmp_path / "predictions" / seq).iterdir()) == [f"{i:05d}.png" for i in range(t)]
        assert (tmp_path / "vis" / f"{seq}.png").is_file()
    dogs = data[1]
    item = overlays[1]
    assert item["caption"] == "dogs"
    np.testing.assert_array_equal(item["image"], dogs.frames[2])  # the middle of 5 frames
    gt = dogs.frame_labels[2].numpy()
    np.testing.assert_array_equal(item["gt"], np.where(gt == 255, 0, gt))
    np.testing.assert_array_equal(item["pred"], np.where((gt == 255) | (gt == 2), 0, gt))
    with Image.open(tmp_path / "vis" / "dogs.png") as img:
        drawn = np.array(img)
    background = gt == 0
    np.testing.assert_array_equal(drawn[background], dogs.frames[2][background])  # nothing drawn there
    assert (drawn[gt == 1] != dogs.frames[2][gt == 1]).any()  # object 1 coloured


def test_overlay_of_an_empty_video_prediction(davis_root, tmp_path):
    sample = Davis(split="eval", root=str(davis_root))[0]
    pred = Prediction(index=0, frame_labels=torch.zeros_like(sample.frame_labels))
    write_overlay(sample, pred, tmp_path)
    with Image.open(tmp_path / "swan.png") as img:
        np.testing.assert_array_equal(np.array(img), sample.frames[3])
    assert not overlay_item(sample, pred)["pred"].any()
