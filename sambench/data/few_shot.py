"""The few-shot protocol (SSPrompt) as a dataset wrapper built by the composition root.

Protocol (``shots=K`` on a training split): for every class, in a class order shuffled with
``random.Random(seed)``, the images holding the class that are not yet selected are shuffled
with the same generator and taken until K selected images hold the class (an image counts for
every class it holds; a class found in fewer than K images gets all of them). The selected
images keep the split's order. Their file names are saved as ``few_shot_selection.json`` in the
run folder (by the composition root, rank 0), and ``file=<that file>`` reloads exactly that list.

The wrapped dataset provides what the draw needs (:class:`FewShotSource`): which classes each
of its samples holds (semantic adapters cache this *presence index*, see
:mod:`sambench.data.semantic`) and a stable file name per sample.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset

from sambench.data.base import check_int
from sambench.errors import ConfigError, DatasetError
from sambench.files import write_json_atomic
from sambench.structures import Sample

logger = logging.getLogger(__name__)

SELECTION_FILE = "few_shot_selection.json"


class FewShotSource(Protocol):
    """What :class:`FewShotSubset` reads from the dataset it wraps."""

    NAME: str
    split_name: str
    root: Path
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def class_presence(self) -> list[set[int]]:
        """Class indices held by each sample, in sample order."""

    def file_name(self, index: int) -> str:
        """The sample's image path relative to the dataset root (what the selection file lists)."""


def few_shot_selection(presence: list[set[int]], num_classes: int, shots: int, seed: int) -> list[int]:
    """Indices (sorted) of a K-shot subset: every class ends up in at least ``min(K, n_c)``
    selected images, where ``n_c`` is the number of images holding it.

    Classes are visited in a random order drawn from ``seed``; for each one, images holding it
    that are not yet selected are drawn at random until K selected images hold the class. An
    image counts for every class it holds. Values outside ``0..num_classes-1`` are ignored.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    rng = random.Random(seed)
    order = list(range(num_classes))
    rng.shuffle(order)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for index, classes in enumerate(presence):
        for c in classes:
            if 0 <= c < num_classes:
                holders[c].append(index)
    selected: set[int] = set()
    counts = [0] * num_classes
    for c in order:
        candidates = [i for i in holders[c] if i not in selected]
        rng.shuffle(candidates)
        for index in candidates:
            if counts[c] >= shots:
                break
            selected.add(index)
            for k in presence[index]:
                if 0 <= k < num_classes:
                    counts[k] += 1
    return sorted(selected)


class FewShotSubset(Dataset):
    """The K-shot subset of a training split (the protocol in the module docstring).

    Sample ``i`` is the wrapped dataset's sample ``indices[i]`` with ``index = i``; other
    attributes (``class_names``, ``root``, ``NAME``...) are the wrapped dataset's.

    Args:
        dataset: the whole training split (a :class:`FewShotSource`).
        shots: K images per class; ignored when ``file`` is given.
        seed: seed of the draw.
        file: a saved ``few_shot_selection.json`` to reuse instead of drawing.
        max_samples: keep only the first N selected samples; None = all.

    Attributes:
        indices: positions in ``dataset`` of the selected samples, in split order.
        selection: the content of the selection file (see :meth:`write`).
    """

    def __init__(
        self, dataset: FewShotSource, *, shots: int | None = 16, seed: int = 0, file: str | None = None,
        max_samples: int | None = None,
    ):
        name = dataset.NAME
        check_int(name, "few_shot.shots", shots, 1, allow_none=True)
        check_int(name, "few_shot.seed", seed, None, allow_none=False)
        check_int(name, "max_samples", max_samples, 1, allow_none=True)
        if not file and shots is None:
            raise ConfigError(f"dataset '{name}': few_shot needs shots or a selection file")
        self.dataset = dataset
        names = [dataset.file_name(i) for i in range(len(dataset))]
        covered = present = None
        if file:
            source: str | None = str(Path(file).expanduser())
            indices, shots, seed = self._load(Path(source), names)
        else:
            source = None
            presence = dataset.class_presence()
            indices = few_shot_selection(presence, len(dataset.class_names), shots, seed)
            if not indices:
                raise DatasetError(
                    f"dataset '{name}': no label map of split '{dataset.split_name}' under {dataset.root} holds any "
                    f"of the {len(dataset.class_names)} classes (all {len(names)} are ignore-only), so the {shots}-shot "
                    f"selection is empty; is it the right label file type?"
                )
            covered = len(set().union(*(presence[i] for i in indices)))
            present = len(set().union(*presence))
        self.selection: dict[str, Any] = {
            "dataset": name, "split": dataset.split_name, "root": str(dataset.root), "shots": shots, "seed": seed,
            "images_in_split": len(names), "num_selected": len(indices), "num_classes": len(dataset.class_names),
            "classes_covered": covered, "classes_in_split": present, "source": source,
            "files": [names[i] for i in indices],
        }
        if source:
            logger.info("%s %s: %d of %d images from the saved selection %s", name, dataset.split_name, len(indices),
                        len(names), source)
        else:
            logger.info(
                "%s %s: %d-shot selection (seed %d): %d of %d images, classes covered %d/%d (%d appear in the split)",
                name, dataset.split_name, shots, seed, len(indices), len(names), covered, len(dataset.class_names),
                present,
            )
        self.indices: list[int] = indices if max_samples is None else indices[:max_samples]

    def _load(self, path: Path, names: list[str]) -> tuple[list[int], Any, Any]:
        """Sample indices of a saved selection file (with its shots and seed)."""
        dataset = self.dataset
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(
                f"few_shot.file not found: {path} (expected a {SELECTION_FILE} saved by an earlier run)"
            ) from None
        except (OSError, ValueError, RecursionError) as exc:
            raise DatasetError(
                f"cannot read few_shot.file {path} ({exc}); expected a {SELECTION_FILE} saved by an earlier run"
            ) from None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise DatasetError(f"few_shot.file {path} has no 'files' list of image paths (expected a {SELECTION_FILE})")
        position = {name: i for i, name in enumerate(names)}
        indices = set()
        for name in files:
            if name not in position:
                raise DatasetError(
                    f"few_shot.file {path} lists '{name}', which is not in the {dataset.NAME} '{dataset.split_name}' "
                    f"split under {dataset.root} (was the selection made on another dataset, split or copy?)"
                )
            indices.add(position[name])
        return sorted(indices), data.get("shots"), data.get("seed")

    def write(self, folder: str | Path) -> Path:
        """Save :attr:`selection` as ``<folder>/few_shot_selection.json`` (the caller picks the rank)."""
        path = Path(folder) / SELECTION_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.selection)
        return path

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        sample = self.dataset[self.indices[index]]
        sample.index = index
        return sample

    def __getattr__(self, name: str):
        if "dataset" not in self.__dict__:  # while unpickling (DataLoader workers)
            raise AttributeError(name)
        return getattr(self.dataset, name)
