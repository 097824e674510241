"""Permuted MNIST: 20 domain-IL tasks of the 10 digits, each with its own fixed pixel permutation
(Mammoth's ``perm-mnist``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from datasets.utils.domain_il import DomainILDataset, Permutation, domain_rng
from datasets.utils.mnist import load_mnist_like
from datasets.utils.sources import ImageSource


class PermutedMNIST(DomainILDataset):
    """Task ``t``: all of MNIST with the 784 pixels shuffled by a permutation drawn from (seed, t).

    Reads ``<base_path>/MNIST/raw/`` like ``seq-mnist``."""

    NAME = "perm-mnist"
    N_TASKS = 20
    N_CLASSES_PER_TASK = 10
    SIZE = (28, 28)
    IN_CHANS = 1
    DEFAULTS = {"backbone": "mnistmlp", "n_epochs": 1, "batch_size": 128}
    CLASS_NAMES = [str(d) for d in range(10)]

    def load(self) -> tuple[ImageSource, ImageSource]:
        data = load_mnist_like("mnist", self.args.base_path)
        self.data_source = data.source
        return data.train, data.test

    def permutation(self, domain: int) -> np.ndarray:
        return domain_rng(self.args.seed, domain).permutation(self.SIZE[0] * self.SIZE[1])

    def domain_transform(self, domain: int) -> Callable:
        return Permutation(self.permutation(domain))
