"""Any folder of images (SA-1B shards, COCO's train2017, ...) for feature distillation.

Images are found recursively by suffix and sorted (symlinked folders are followed, each real
folder once); the last ``eval_images`` are held out for evaluation (or ``eval_dir`` names a
separate folder). Samples carry only the image.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sambench import tasks
from sambench.data.base import SambenchDataset, inside_root, read_image, resolve_root, walk_files
from sambench.errors import ConfigError, DatasetError
from sambench.registry import DATASETS
from sambench.structures import Sample

logger = logging.getLogger(__name__)


@DATASETS.register_module(name="image_folder")
class ImageFolderDataset(SambenchDataset):
    """Args:
        split: "train" or "eval".
        root: the folder; train_dir / eval_dir: sub-folders (relative to root) for each split;
            ``eval_dir=None`` holds out the last ``eval_images`` images of ``train_dir``.
        suffixes: image file suffixes (case-insensitive).
        max_images: keep only the first N images of the split (quick runs).
    """

    TASKS = (tasks.IMAGE_DISTILLATION,)

    def __init__(self, *, split: str, root: str, train_dir: str = ".", eval_dir: str | None = None, eval_images: int = 8,
                 suffixes: tuple[str, ...] = (".jpg", ".jpeg", ".png"), max_images: int | None = None):
        if split not in ("train", "eval"):
            raise ConfigError(f"dataset 'image_folder': split must be 'train' or 'eval', got '{split}'")
        self.root = resolve_root(root, "image_folder", "a folder of images (e.g. SA-1B shards or COCO train2017)")
        folder = inside_root(self.root, eval_dir if split == "eval" and eval_dir else train_dir)
        wanted = {s.lower() for s in suffixes}
        if not folder.is_dir():
            raise DatasetError(
                f"image folder not found: {folder} (set dataset.train_dir / dataset.eval_dir relative to {self.root})"
            )
        files = walk_files(folder, lambda name: Path(name).suffix.lower() in wanted)
        if eval_dir is None:
            if len(files) <= eval_images:
                raise DatasetError(f"{folder} has {len(files)} images; holding out dataset.eval_images={eval_images} needs more")
            files = files[-eval_images:] if split == "eval" else files[:-eval_images]
        if not files:
            raise DatasetError(f"no images ({', '.join(sorted(wanted))}) found under {folder}")
        self.files = files[:max_images] if max_images else files
        logger.info("image_folder %s (%s): %d images", folder, split, len(self.files))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        path = self.files[index]
        relative = path.relative_to(self.root).as_posix()
        return Sample(index=index, image=read_image(path), meta={"file_name": relative, "prediction_path": str(Path(relative).with_suffix(""))})
