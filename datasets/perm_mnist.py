"""Permuted MNIST: 20 domain-IL tasks of the 10 digits, each with its own fixed pixel permutation
(Mammoth's ``perm-mnist``)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from datasets.utils.domain_il import DomainILDataset, Permutation, domain_rng
from datasets.utils.mnist import MnistLike


class PermutedMNIST(MnistLike, DomainILDataset):
    """Task ``t``: all of MNIST with the 784 pixels shuffled by a permutation drawn from (seed, t).

    Reads ``<base_path>/MNIST/raw/`` like ``seq-mnist``."""

    NAME = "perm-mnist"
    N_TASKS = 20
    N_CLASSES_PER_TASK = 10
    DEFAULTS = {**MnistLike.DEFAULTS, "batch_size": 128}

    def permutation(self, domain: int) -> np.ndarray:
        return domain_rng(self.args.seed, domain).permutation(self.size[0] * self.size[1])

    def domain_transform(self, domain: int) -> Callable:
        return Permutation(self.permutation(domain))
