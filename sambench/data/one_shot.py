"""One-shot semantic segmentation benchmarks (COCO-20i, FSS-1000, LVIS-92i) as PERSONALIZE datasets.

An *episode* is a (class, query image, support image) triple; each one becomes a
:class:`~sambench.structures.Sample` whose ``image`` is the query (H×W×3 uint8), ``masks`` the
query's ground truth of the class (1×H×W bool) and ``references`` the one support view (its
mask as 0/255 in all three channels). ``meta["object"]`` is the class name, so the
personalisation evaluator's per-object accumulated IoU ΣI/ΣU is HSNet's per-class IoU and its
mean over objects HSNet's mIoU.

Episodes are drawn in ``__init__`` (no image is read) with a dedicated
``np.random.RandomState(seed)`` consumed by the same numpy calls, in the same order, as the
official loaders (HSNet ``data/coco.py`` / ``data/fss.py``, Matcher ``matcher/data/lvis.py``)
consume the global legacy generator after ``np.random.seed(0)``: seed 0 gives the official test
episodes. ``meta`` holds ``object`` (the class name), ``class_id`` (its position in
``class_names``), ``episode``, ``query`` and ``support`` (image names relative to the image root),
``name`` (``%05d`` of the episode), ``prediction_path`` (``<class>/<episode>``) and ``concept``
(file-name-safe class + support: PerSAM-F's fitted-weight file name). The reference's ``name`` is
``<class>/<support>``: PerSAM caches a concept by its reference names, and one COCO/LVIS image
is the support of several classes with different masks. The list can be saved (:meth:`OneShotDataset.write_episodes`, ``episodes.json`` in the
run folder) and reloaded (``episodes_file=``) instead of drawing.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sambench import tasks
from sambench.data.base import SambenchDataset, check_int, inside_root
from sambench.errors import ConfigError, DatasetError
from sambench.files import write_json_atomic
from sambench.structures import Reference, Sample

logger = logging.getLogger(__name__)

EPISODES_FILE = "episodes.json"


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-_.``; anything else -> ``_``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip(".") or "_"


def split_path(root: Path, split_file: str | None, default: str) -> Path:
    """The split file: ``split_file`` as given when absolute (a user's choice, e.g. a file of the
    official repository), else relative to ``root``; ``default`` (relative to root) when None."""
    if split_file:
        path = Path(split_file).expanduser()
        return path if path.is_absolute() else inside_root(root, split_file)
    return inside_root(root, default)


class OneShotDataset(SambenchDataset):
    """Shared episode logic of the one-shot benchmarks; subclasses read their layout.

    Subclasses set ``NAME``, ``class_ids`` (the evaluated classes, in their native ids: a COCO
    class index, an FSS class folder, an LVIS category id) and ``class_names`` (same order), and
    implement :meth:`candidates` (the image names a class's query/support may be),
    :meth:`draw` (the official episode draw), :meth:`files` (the files an image name needs) and
    :meth:`read` (an image and its class mask). They call :meth:`set_episodes` at the end of
    ``__init__``.
    """

    TASKS = (tasks.PERSONALIZE,)
    NAME = "one_shot"
    #: What the ``fold`` of this dataset is (None: the dataset has no folds).
    fold: int | None = None

    # ----- subclass hooks ---------------------------------------------------------------------
    def candidates(self, class_id) -> set[str]:  # pragma: no cover - abstract
        """Image names (relative to the image root) a query/support of ``class_id`` may be."""
        raise NotImplementedError

    def draw(self, rng: np.random.RandomState, count: int | None) -> list[dict[str, Any]]:  # pragma: no cover
        """The official episode list ({class, query, support} dicts), drawn from ``rng``."""
        raise NotImplementedError

    def files(self, name: str) -> list[Path]:  # pragma: no cover - abstract
        """The files (image, mask) that image ``name`` needs."""
        raise NotImplementedError

    def read(self, class_id, name: str) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """Image ``name`` (H×W×3 uint8) and its mask of ``class_id`` (H×W bool)."""
        raise NotImplementedError

    # ----- episodes ---------------------------------------------------------------------------
    def check_split(self, split: str) -> None:
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset '{self.NAME}': split must be 'train' or 'eval', got '{split}'")
        self.split = split

    def set_fold(self, fold: int, num_folds: int) -> None:
        """Check ``fold`` (0..num_folds-1) and keep it."""
        check_int(self.NAME, "fold", fold, 0, allow_none=False)
        if fold >= num_folds:
            raise ConfigError(f"dataset '{self.NAME}': fold must be 0..{num_folds - 1}, got {fold}")
        self.fold = fold

    def set_episodes(self, *, seed: int, count: int | None, episodes_file: str | None,
                     max_samples: int | None) -> None:
        """Draw the episodes (``count`` of them; None = the dataset's fixed number) from
        ``RandomState(seed)``, or load ``episodes_file``; keep the first ``max_samples``; check
        that every file an episode needs exists."""
        check_int(self.NAME, "seed", seed, 0, allow_none=False)
        check_int(self.NAME, "max_samples", max_samples, 1, allow_none=True)
        self.seed = seed
        self.class_names = [self.class_name(c) for c in self.class_ids]
        self._position = {c: i for i, c in enumerate(self.class_ids)}
        if episodes_file:
            self.episodes_source: str | None = str(Path(episodes_file).expanduser())
            episodes = self._load_episodes(Path(self.episodes_source))
        else:
            self.episodes_source = None
            episodes = self.draw(np.random.RandomState(seed), count)
        self.num_drawn = len(episodes)
        self.episodes: list[dict[str, Any]] = episodes if max_samples is None else episodes[:max_samples]
        for number, episode in enumerate(self.episodes):
            for role in ("query", "support"):
                for path in self.files(episode[role]):
                    if not path.is_file():
                        raise DatasetError(
                            f"{self.NAME} episode {number}: {role} file not found: {path} "
                            f"(class {self.class_name(episode['class'])}, image {episode[role]}; expected the "
                            f"full {self.NAME} layout under {self.root})"
                        )
        source = f"from {self.episodes_source}" if self.episodes_source else f"drawn with seed {seed}"
        logger.info("%s%s: %d episodes %s over %d classes", self.NAME,
                    "" if self.fold is None else f" fold {self.fold}", len(self.episodes), source, len(self.class_ids))

    def class_name(self, class_id) -> str:
        return str(class_id)

    def _load_episodes(self, path: Path) -> list[dict[str, Any]]:
        """Episodes of a saved ``episodes.json``, checked against this dataset's classes and files."""
        where = f"episodes_file {path}"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"{where} not found (expected an {EPISODES_FILE} saved by an earlier run)") from None
        except (OSError, ValueError, RecursionError) as exc:
            raise DatasetError(f"cannot read {where} ({exc}); expected an {EPISODES_FILE} saved by an earlier run") from None
        episodes = data.get("episodes") if isinstance(data, dict) else None
        if not isinstance(episodes, list) or not episodes:
            raise DatasetError(f"{where} has no 'episodes' list (expected an {EPISODES_FILE} saved by an earlier run)")
        if data.get("dataset") not in (None, self.NAME):
            raise DatasetError(f"{where} holds {data['dataset']} episodes; this dataset is {self.NAME}")
        checked, allowed_by_class = [], {}
        for number, episode in enumerate(episodes):
            if not (isinstance(episode, dict) and {"class", "query", "support"} <= set(episode)
                    and isinstance(episode["query"], str) and isinstance(episode["support"], str)):
                raise DatasetError(f"{where}: episode {number} is not a {{class, query, support}} record: {episode!r:.120}")
            class_id = episode["class"]
            if class_id not in self._position or isinstance(class_id, bool):
                fold = "" if self.fold is None else f" fold {self.fold}"
                raise DatasetError(
                    f"{where}: episode {number} has class {class_id!r}, which is not a class of {self.NAME}{fold} "
                    f"(was the list saved for another fold or dataset?)"
                )
            if class_id not in allowed_by_class:
                allowed_by_class[class_id] = self.candidates(class_id)
            allowed = allowed_by_class[class_id]
            for role in ("query", "support"):
                if episode[role] not in allowed:
                    raise DatasetError(
                        f"{where}: episode {number}'s {role} '{episode[role]}' is not an image of class "
                        f"{self.class_name(class_id)} in {self.NAME} under {self.root}"
                    )
            if episode["query"] == episode["support"]:
                raise DatasetError(f"{where}: episode {number} uses '{episode['query']}' as its own support")
            checked.append({"class": class_id, "query": episode["query"], "support": episode["support"]})
        return checked

    def write_episodes(self, folder: str | Path) -> Path:
        """Save the episode list as ``<folder>/episodes.json`` (the caller picks the rank)."""
        path = Path(folder) / EPISODES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {
            "dataset": self.NAME, "fold": self.fold, "seed": self.seed, "root": str(self.root),
            "source": self.episodes_source, "num_episodes": len(self.episodes), "episodes": self.episodes,
        })
        return path

    # ----- samples ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> Sample:
        episode = self.episodes[index]
        class_id, query, support = episode["class"], episode["query"], episode["support"]
        name = self.class_name(class_id)
        image, mask = self.read(class_id, query)
        support_image, support_mask = self.read(class_id, support)
        reference = Reference.from_mask(support_image, support_mask, name=f"{name}/{support}")
        return Sample(
            index=index,
            image=image,
            masks=torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)[None]),
            references=[reference],
            meta={
                "object": name,
                "class_id": self._position[class_id],
                "episode": index,
                "query": query,
                "support": support,
                "name": f"{index:05d}",
                "prediction_path": f"{safe_name(name)}/{index:05d}",
                "concept": safe_name(f"{name}__{Path(support).with_suffix('').as_posix().replace('/', '_')}"),
            },
        )
