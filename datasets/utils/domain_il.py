"""Domain-incremental benchmarks: the same classes in every task, a fixed seeded input transform per task.

Task ``t`` is the whole dataset seen through the domain transform ``t`` (a rotation of the PIL image, a
pixel permutation of the tensor, ...), applied before the normalisation. The not-augmented view (what
rehearsal buffers store) is the transformed image too, so a replayed example keeps its domain.
Transforms are drawn from ``--seed`` (0 when unset) in the parent process, identical in every
data-loader worker and every DDP rank (never drawn again inside a worker).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.utils.debug import SeededConcatDataset
from torchvision import transforms
from torchvision.transforms import functional as TF

from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.scenario import SharedLabelScenario
from datasets.utils.sources import TaskDataset


class Rotation:
    """Rotate an image (PIL or tensor) by a fixed angle in degrees, counter-clockwise."""

    def __init__(self, angle: float):
        self.angle = float(angle)

    def __call__(self, img: Any) -> Any:
        return TF.rotate(img, self.angle)

    def __repr__(self) -> str:
        return f"Rotation({self.angle:.2f})"


class Permutation:
    """Shuffle the pixels of a (C, H, W) tensor with a fixed permutation of the H*W positions."""

    def __init__(self, permutation: np.ndarray):
        self.permutation = torch.as_tensor(np.asarray(permutation), dtype=torch.long)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)[:, self.permutation].reshape(x.shape)


def domain_rng(seed: Any, task: int) -> np.random.RandomState:
    """The generator of task ``task``'s transform: a function of (``--seed`` or 0, task) only."""
    return np.random.RandomState((int(seed or 0) * 7919 + task) % 2 ** 32)


class DomainILDataset(ContinualDataset):
    """Subclasses set ``N_TASKS``, ``N_CLASSES_PER_TASK`` (the shared classes) and :meth:`domain_transform`.

    ``--joint 1`` makes one task whose training and test sets are the union of all domains.
    """

    SETTING = "domain-il"
    DOMAIN_ON_PIL = False  # True: the domain transform takes the PIL image (before ToTensor), else the tensor

    def build_scenario(self) -> SharedLabelScenario:
        return SharedLabelScenario.build(int(self.n_classes_per_task), self.n_tasks,
                                         permute=bool(self.args.permute_classes), seed=self.args.seed)

    def _collapse_to_one_task(self) -> None:
        self.n_tasks = 1  # same classes; the single task gathers every domain

    def domain_transform(self, domain: int) -> Callable:
        """The fixed transform of domain ``domain``: on the PIL image (``DOMAIN_ON_PIL``) or the (C, H, W) tensor."""
        raise NotImplementedError

    def _domains(self, task: int, cumulative: bool = False) -> list[int]:
        if getattr(self.args, "joint", False):
            return list(range(self.n_domains))
        return list(range(task + 1)) if cumulative else [task]

    def _view(self, domain: int, normalise: bool) -> Callable:
        ops = [transforms.ToTensor(), self.domain_transform(domain)]
        if self.DOMAIN_ON_PIL:
            ops.reverse()
        return transforms.Compose(ops + [self.get_normalization_transform()] if normalise else ops)

    def _domain_dataset(self, source, domains: list[int], train: bool) -> Dataset:
        indices = np.arange(len(source))
        parts = [TaskDataset(source, indices, self._view(d, True), self._view(d, False) if train else None)
                 for d in domains]
        return parts[0] if len(parts) == 1 else SeededConcatDataset(parts)

    def train_dataset(self, task: int) -> Dataset:
        train, _ = self.splits
        return self._domain_dataset(train, self._domains(task), train=True)

    def test_dataset(self, task: int) -> Dataset:
        _, test = self.splits
        cumulative = bool(self.args.validation) and self.args.validation_mode == "complete"
        return self._domain_dataset(test, self._domains(task, cumulative), train=False)
