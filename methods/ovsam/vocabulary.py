"""Per-vocabulary class text embeddings for the open-vocabulary classifiers.

Training and evaluation splits have different vocabularies (COCO-OV: 48 base classes in training,
65 at evaluation; LVIS: no rare classes in training), and every :class:`Sample` names its own
(``sample.class_names``). :class:`TextEmbeddingBank` turns a vocabulary into its ``C×P×D``
embeddings once (on disk through :func:`cached_text_embeddings` when a cache folder is set, in
memory always), so a run never needs a separately prepared embedding file. A dataset's
``class_names_file`` arrives as ``sample.meta["synonym_lists"]`` and is part of the key.
"""

from __future__ import annotations

import torch

from .text_embeddings import build_text_embeddings, cached_text_embeddings, text_cache_file


class TextEmbeddingBank:
    """Args:
        clip: a :class:`~sambench.backbones.clip.ClipBackbone` (its text tower).
        cache_dir: folder for the on-disk cache; None = compute in memory only.
    """

    def __init__(self, clip, cache_dir: str | None = None):
        self.clip, self.cache_dir = clip, cache_dir
        self._memory: dict[tuple[str, ...], torch.Tensor] = {}

    def __call__(self, class_names: list[str], synonym_lists: list[list[str]] | None = None) -> torch.Tensor:
        """C×P×D float32 embeddings on the CLIP's device (L2-normalised per synonym).

        ``synonym_lists``: one list of names per class (a dataset's ``class_names_file``,
        ``sample.meta["synonym_lists"]``); None = split each class name into its synonyms."""
        names = list(class_names)
        if not names:
            raise ValueError("open-vocabulary classification needs the dataset's class names (sample.class_names)")
        lists = None if synonym_lists is None else [list(s) for s in synonym_lists]
        key = (tuple(names), None if lists is None else tuple(map(tuple, lists)))
        if key not in self._memory:
            if self.cache_dir:
                self._memory[key] = cached_text_embeddings(self.clip, names, self.cache_dir, self.clip.name,
                                                           self.clip.weights_id, synonym_lists=lists)
            else:
                self._memory[key] = build_text_embeddings(self.clip, names, synonym_lists=lists).cpu()
        return self._memory[key].to(self.clip.device)

    def cache_file(self, class_names: list[str], synonym_lists: list[list[str]] | None = None):
        """Where the embeddings of ``class_names`` (and ``synonym_lists``) are cached (None without a cache folder)."""
        if not self.cache_dir:
            return None
        return text_cache_file(self.cache_dir, self.clip.name, self.clip.weights_id, list(class_names), synonym_lists)
