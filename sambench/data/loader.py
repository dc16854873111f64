"""Data loaders: one sharded sampler for 1..N ranks, resumable mid-epoch.

Each loader owns a ``torch.Generator``: starting an iterator draws its worker base seed from
it, never from torch's global RNG, which methods use for augmentation and the engine stores in
checkpoints (an extra global draw at the resume step would make a resumed run diverge).
The training loader's generator is re-seeded per epoch (:func:`start_epoch`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sambench.dist import rank, world_size
from sambench.structures import collate


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also used with 1 rank) that can skip the first ``skip`` indices
    of its shard, so a resumed run sees exactly the batches it had not seen."""

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int, drop_last: bool):
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


def train_loader(dataset: Dataset, *, batch_size: int, seed: int, num_workers: int) -> DataLoader:
    """Shuffled, sharded; incomplete last batches are dropped so every rank steps together."""
    sampler = ResumableSampler(dataset, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate, drop_last=True, persistent_workers=False, generator=torch.Generator(),
    )


def start_epoch(loader: DataLoader, *, seed: int, epoch: int, skip_batches: int) -> Iterator:
    """A training iterator for ``epoch`` that skips its first ``skip_batches`` batches: the same
    shuffle and the same worker seeds whether the epoch starts fresh or at a resume."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = skip_batches * loader.batch_size
    loader.generator.manual_seed(seed * 100_003 + epoch)
    return iter(loader)


def eval_loader(dataset: Dataset, *, batch_size: int, num_workers: int) -> DataLoader:
    """In order, sharded, padded by the sampler (evaluators drop the padding by index)."""
    sampler = ResumableSampler(dataset, shuffle=False, seed=0, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))
