"""``--debug_mode 1``: every pass over data sees at most :data:`DEBUG_IMAGES` images.

The cap lives in one place, :meth:`ContinualDataset.make_loader`, which every loader of the
framework goes through (training epochs, evaluation, and the statistics passes of the methods:
second_order's features/probe/Fisher, EWC's Fisher, joint's union, SLCA/RanPAC features). It counts
*images*, not batches, so a pass costs the same few forward passes whatever ``--batch_size`` or
``--stats_batch_size`` is. Mammoth's debug mode instead stops after ~6 batches of any size.
"""
from __future__ import annotations

import bisect
from typing import Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from datasets.utils.sources import with_fields

DEBUG_IMAGES = 4


class CappedDataset(Subset):
    """A :class:`Subset` that also forwards ``(position, seed)`` items (seeded per-sample augmentation)."""

    extra_return_fields: tuple[str, ...] = ()  # per-sample attributes a model attached (see TaskDataset)

    def __getitem__(self, i):
        if isinstance(i, tuple):
            position, seed = i
            return with_fields(self.dataset[(self.indices[position], seed)], self, position)
        return with_fields(self.dataset[self.indices[i]], self, i)

    def __getitems__(self, indices: list) -> list:
        return [self.__getitem__(i) for i in indices]

    @property
    def data(self):
        """The kept images (Mammoth models read and assign ``train_loader.dataset.data``/``targets``)."""
        inner = self.dataset.data
        return inner[self.indices] if isinstance(inner, np.ndarray) else [inner[i] for i in self.indices]

    @data.setter
    def data(self, value) -> None:
        self._own()
        self.dataset.data = value

    @property
    def targets(self) -> np.ndarray:
        return np.asarray(self.dataset.targets)[self.indices]

    @targets.setter
    def targets(self, value: np.ndarray) -> None:
        self._own()
        self.dataset.targets = value
        self.indices = list(range(len(value)))

    def _own(self) -> None:
        """Cut the wrapped dataset to the kept items once: assignments then replace exactly what is served."""
        if getattr(self, "_owned", False):
            return
        data, targets = self.data, self.targets
        self.dataset.targets = targets
        self.dataset.data = data
        self.indices = list(range(len(targets)))
        self._owned = True


class SeededConcatDataset(ConcatDataset):
    """A :class:`ConcatDataset` that also forwards ``(position, seed)`` items (seeded per-sample augmentation)."""

    def __getitem__(self, i):
        if isinstance(i, tuple):
            position, seed = i
            part = bisect.bisect_right(self.cumulative_sizes, position)
            start = self.cumulative_sizes[part - 1] if part else 0
            return self.datasets[part][(position - start, seed)]
        return super().__getitem__(i)

    def __getitems__(self, indices: list) -> list:
        return [self.__getitem__(i) for i in indices]


def debug_cap(dataset: Dataset, shuffle: bool, seed: Optional[int] = None,
              limit: int = DEBUG_IMAGES) -> Dataset:
    """``dataset`` cut to ``limit`` items: a seeded random subset for shuffled (training/statistics) passes,
    the first items for test passes. Unchanged when it is already that small."""
    n = len(dataset)
    if n <= limit:
        return dataset
    if shuffle:
        g = torch.Generator().manual_seed(int(seed or 0))
        keep = np.sort(torch.randperm(n, generator=g)[:limit].numpy())
    else:
        keep = np.arange(limit)
    return CappedDataset(dataset, keep.tolist())
