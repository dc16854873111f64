"""DAVIS 2017 (semi-supervised video object segmentation): one sample per sequence.

Layout (the official download; davis2017-evaluation's ``davis.py``):
``root/JPEGImages/<resolution>/<sequence>/00000.jpg ...``,
``root/Annotations/<resolution>/<sequence>/00000.png ...`` (indexed PNGs: 0 background,
1..N objects, 255 void) and ``root/ImageSets/2017/<list>.txt`` (one sequence per line).
Annotations are read as the official loaders read them (``np.array(Image.open(p))``: palette
indices, no colour conversion); a frame without an annotation PNG gets an all-zero label map, as
Personalize-SAM's ``DAVISTestDataset`` does. The first frame's objects are the references.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sambench import tasks
from sambench.data.base import SambenchDataset, inside_root, read_image, read_label_png, resolve_root
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS, closest
from sambench.structures import Reference, Sample

ROOT_HINT = "a DAVIS folder holding JPEGImages/<resolution>/<sequence>/, Annotations/<resolution>/<sequence>/ and ImageSets/2017/"
RESOLUTIONS = ("480p", "Full-Resolution")
YEAR = "2017"
VOID = 255
ANNOTATION_MODES = ("P", "L")


def header_size(path: Path, what: str) -> tuple[int, int]:
    """(H, W) from an image file's header (nothing decoded)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise DatasetError(f"{what} not found: {path}") from None
    except Exception as exc:  # PIL's errors for files that are not images
        raise DatasetError(f"cannot read {what} {path}: expected a JPEG/PNG file ({exc})") from None
    return height, width


class VideoFrames(Sequence):
    """A sequence's frames, read when indexed: ``frames[t]`` is H×W×3 uint8 RGB.

    Holds only the file paths (picklable, cheap to send to loader workers); every read checks
    that the frame is ``size`` (H, W), the size of the sequence's annotations.
    """

    def __init__(self, paths: list[Path], size: tuple[int, int]):
        self.paths = list(paths)
        self.size = tuple(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return VideoFrames(self.paths[index], self.size)
        path = self.paths[index]
        frame = read_image(path, expected_size=self.size)
        if frame.shape[:2] != self.size:
            raise DatasetError(
                f"frame {path} is {frame.shape[0]}x{frame.shape[1]} but the sequence's annotations are "
                f"{self.size[0]}x{self.size[1]} (expected every frame the size of the first annotation)"
            )
        return frame

    def __repr__(self) -> str:
        return f"VideoFrames({len(self)} frames, {self.size[0]}x{self.size[1]})"


@DATASETS.register_module(name="davis2017")
class Davis2017Dataset(SambenchDataset):
    """DAVIS 2017: one :class:`Sample` per sequence of the split's list, in list order.

    A sample holds ``image`` (frame 0, H×W×3 uint8), ``frames`` (:class:`VideoFrames`, T frames
    read when indexed), ``frame_labels`` (T×H×W uint8: 0 background, k object k, 255 void),
    ``references`` (one per object id of frame 0, ``name`` ``<sequence>/<k>``: frame 0 and the
    object's mask as 0/255 RGB), ``masks`` (N×H×W bool, the first-frame object masks) and
    ``meta`` = {name, sequence, prediction_path (the sequence: frame PNGs go to
    ``<sequence>/<frame>.png``), frame_names, object_ids, concept}.

    Args:
        split: "train" or "eval" (set by the composition root): picks ``train_split`` or
            ``eval_split``.
        root: the DAVIS folder.
        eval_split, train_split: sequence lists read from ``ImageSets/2017/<name>.txt``.
        resolution: "480p" or "Full-Resolution".
        sequences: keep only these sequences of the list (None = all).
    """

    TASKS = (tasks.VIDEO_OBJECT,)

    def __init__(
        self,
        *,
        split: str,
        root: str,
        eval_split: str = "val",
        train_split: str = "train",
        resolution: str = "480p",
        sequences: list[str] | None = None,
    ):
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset 'davis2017': split must be 'train' or 'eval', got '{split}'")
        if resolution not in RESOLUTIONS:
            raise ConfigError(
                f"dataset 'davis2017': resolution '{resolution}' is not a DAVIS resolution{closest(str(resolution), RESOLUTIONS)}; "
                f"valid: {', '.join(RESOLUTIONS)}"
            )
        self.split = split
        self.list_name = train_split if split == "train" else eval_split
        self.resolution = resolution
        self.root = resolve_root(root, "davis2017", ROOT_HINT)
        self.image_root = inside_root(self.root, f"JPEGImages/{resolution}")
        self.label_root = inside_root(self.root, f"Annotations/{resolution}")
        for folder in (self.image_root, self.label_root):
            if not folder.is_dir():
                raise DatasetError(f"DAVIS folder not found: {folder} (expected {ROOT_HINT}, resolution {resolution})")
        self.sequences = self._select(self._read_list(), sequences)
        self.frame_paths = {seq: self._index_sequence(seq) for seq in self.sequences}

    def _read_list(self) -> list[str]:
        list_dir = inside_root(self.root, f"ImageSets/{YEAR}")
        path = inside_root(list_dir, f"{self.list_name}.txt")
        if not path.is_file():
            found = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
            option = "train_split" if self.split == "train" else "eval_split"
            raise DatasetError(
                f"DAVIS sequence list not found: {path} (dataset.{option}={self.list_name}; expected one sequence "
                f"name per line{'; lists there: ' + ', '.join(found) if found else ''})"
            )
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"DAVIS sequence list {path} is empty (expected one sequence name per line)")
        return list(dict.fromkeys(names))

    def _select(self, listed: list[str], sequences) -> list[str]:
        if sequences is None:
            return listed
        if isinstance(sequences, str):
            sequences = [sequences]
        for name in sequences:
            if name not in listed:
                raise DatasetError(
                    f"sequence '{name}' is not in the DAVIS list {self.list_name}.txt{closest(name, listed)}"
                )
        return [name for name in listed if name in set(sequences)]

    def _index_sequence(self, seq: str) -> list[Path]:
        folder = inside_root(self.image_root, seq)
        if not folder.is_dir():
            raise DatasetError(
                f"frame folder not found: {folder} (sequence '{seq}' of {self.list_name}.txt; expected "
                f"JPEGImages/{self.resolution}/{seq}/00000.jpg ...)"
            )
        frames = sorted(p for p in folder.glob("*.jpg") if p.is_file() and not p.name.startswith("."))
        if not frames:
            raise DatasetError(f"no frames in {folder} (expected JPEG frames 00000.jpg ... of sequence '{seq}')")
        first = self.label_path(seq, frames[0].stem)
        if not first.is_file():
            raise DatasetError(
                f"first-frame annotation not found: {first} (expected an indexed PNG of sequence '{seq}''s objects)"
            )
        return frames

    def label_path(self, seq: str, frame_name: str) -> Path:
        return inside_root(self.label_root, f"{seq}/{frame_name}.png")

    def read_labels(self, path: Path) -> np.ndarray:
        """An annotation PNG's H×W uint8 indices (palette indices as stored; 'P' or 'L' only)."""
        with Image.open(path) as img:
            mode = img.mode
        if mode not in ANNOTATION_MODES:
            raise DatasetError(
                f"annotation {path} has mode {mode}; expected an indexed (palette 'P') or 8-bit grayscale "
                f"('L') PNG of object ids (0 background, 1..N objects, 255 void), as DAVIS ships them"
            )
        return read_label_png(path).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Sample:
        seq = self.sequences[index]
        paths = self.frame_paths[seq]
        names = [p.stem for p in paths]
        first = self.read_labels(self.label_path(seq, names[0]))
        size = first.shape
        labels = np.zeros((len(paths), *size), dtype=np.uint8)
        for t, (path, name) in enumerate(zip(paths, names)):
            frame_size = header_size(path, "frame")
            if frame_size != size:
                raise DatasetError(
                    f"frame {path} is {frame_size[0]}x{frame_size[1]} but the first annotation of '{seq}' is "
                    f"{size[0]}x{size[1]} (expected every frame the size of the first annotation)"
                )
            label_path = self.label_path(seq, name)
            if t == 0:
                labels[0] = first
            elif label_path.is_file():
                frame_labels = self.read_labels(label_path)
                if frame_labels.shape != size:
                    raise DatasetError(
                        f"annotation {label_path} is {frame_labels.shape[0]}x{frame_labels.shape[1]} but the first "
                        f"annotation of '{seq}' is {size[0]}x{size[1]} (expected one size per sequence)"
                    )
                labels[t] = frame_labels
        object_ids = [int(k) for k in np.unique(first) if k not in (0, VOID)]
        if not object_ids:
            raise DatasetError(
                f"first-frame annotation {self.label_path(seq, names[0])} holds no object id "
                f"(expected ids 1..N besides background 0 and void 255)"
            )
        frames = VideoFrames(paths, size)
        image = frames[0]
        masks = np.stack([first == k for k in object_ids])
        references = [Reference.from_mask(image, mask, name=f"{seq}/{k}") for k, mask in zip(object_ids, masks)]
        return Sample(
            index=index,
            image=image,
            masks=torch.from_numpy(masks),
            references=references,
            frames=frames,
            frame_labels=torch.from_numpy(labels),
            meta={
                "name": seq,
                "sequence": seq,
                "prediction_path": seq,
                "frame_names": names,
                "object_ids": object_ids,
                "concept": seq,
            },
        )
