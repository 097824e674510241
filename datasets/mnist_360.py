"""MNIST-360 (Mammoth's ``mnist-360``, from the DER paper): a general-continual stream of rotating digit pairs.

Digits 0-8 (9 classes). The training stream is 3 rounds of the 9 pairs (0,1), (1,2), ..., (8,0);
within a pair's segment the two digits' images are interleaved and rotated by an angle that grows
linearly from 0 to 360 degrees along the segment. Each digit appears in 2 pairs per round, so its
training images are split into 6 disjoint chunks, one per appearance. The test set holds every test
image of digits 0-8, each rotated by its own fixed random angle. There are no task boundaries: one
task, one pass over the stream in its order (no shuffling). All draws come from ``--seed`` (0 if unset).
This is this project's own construction of the benchmark's idea, not Mammoth's code.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from torch.utils.data import Dataset

from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.domain_il import Rotation
from datasets.utils.mnist import MnistLike
from datasets.utils.scenario import SharedLabelScenario
from datasets.utils.sources import ImageSource
from utils.errors import UserError

N_DIGITS, ROUNDS = 9, 3


def pair_stream(targets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices into ``targets``, angles in degrees) of the training stream, in stream order."""
    rng = np.random.RandomState(seed)
    chunks = {d: np.array_split(rng.permutation(np.flatnonzero(targets == d)), 2 * ROUNDS) for d in range(N_DIGITS)}
    used = {d: 0 for d in range(N_DIGITS)}
    order, angles = [], []
    for _ in range(ROUNDS):
        for first in range(N_DIGITS):
            segment = []
            for digit in (first, (first + 1) % N_DIGITS):
                segment.append(chunks[digit][used[digit]])
                used[digit] += 1
            idx = rng.permutation(np.concatenate(segment))
            order.append(idx)
            angles.append(np.linspace(0.0, 360.0, num=len(idx), endpoint=False))
    return np.concatenate(order).astype(np.int64), np.concatenate(angles)


class RotatedStream(Dataset):
    """Items ``(transform(rotated), label[, not_aug(rotated)])`` of ``source`` at ``indices`` with per-item angles."""

    def __init__(self, source: ImageSource, indices: np.ndarray, angles: np.ndarray, transform: Callable,
                 not_aug_transform: Optional[Callable] = None):
        self.source, self.indices, self.angles = source, np.asarray(indices), np.asarray(angles, dtype=np.float64)
        self.transform, self.not_aug_transform = transform, not_aug_transform

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        index = int(self.indices[i])
        img = Rotation(self.angles[i])(self.source.image(index))
        label = int(self.source.targets[index])
        if self.not_aug_transform is None:
            return self.transform(img), label
        return self.transform(img), label, self.not_aug_transform(img)


class MNIST360(MnistLike, ContinualDataset):
    """Reads ``<base_path>/MNIST/raw/`` like ``seq-mnist`` (digit 9 is left out, as in the benchmark)."""

    NAME = "mnist-360"
    SETTING = "general-continual"
    N_TASKS = 1
    N_CLASSES_PER_TASK = N_DIGITS
    DEFAULTS = {**MnistLike.DEFAULTS, "batch_size": 16}
    CLASS_NAMES = [str(d) for d in range(N_DIGITS)]
    SHUFFLE_TRAIN = False

    def _configure(self) -> None:
        if self.args.n_epochs is not None and self.args.n_epochs != 1 and not getattr(self.args, "joint", False):
            raise UserError(f"{self.NAME} is a single-pass stream without task boundaries: use --n_epochs 1 "
                            f"(or --joint 1 for i.i.d. training on the whole stream)")

    def build_scenario(self) -> SharedLabelScenario:
        return SharedLabelScenario.build(N_DIGITS, 1, permute=bool(self.args.permute_classes), seed=self.args.seed)

    def _collapse_to_one_task(self) -> None:
        """Already one task: ``--joint 1`` only shuffles the stream (i.i.d. training on the same images)."""

    def load(self) -> tuple[ImageSource, ImageSource]:
        train, test = super().load()
        keep = [np.flatnonzero(src.targets < N_DIGITS) for src in (train, test)]
        return train.subset(keep[0]), test.subset(keep[1])

    @property
    def _seed(self) -> int:
        return int(self.args.seed or 0)

    def train_dataset(self, task: int) -> RotatedStream:
        train, _ = self.splits
        indices, angles = pair_stream(train.targets, self._seed)
        return RotatedStream(train, indices, angles, self.get_transform(), self.get_not_aug_transform())

    def test_dataset(self, task: int) -> RotatedStream:
        _, test = self.splits
        angles = np.random.RandomState(self._seed + 1).uniform(0.0, 360.0, size=len(test))
        return RotatedStream(test, np.arange(len(test)), angles, self.get_test_transform())
