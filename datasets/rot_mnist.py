"""Rotated MNIST: 20 domain-IL tasks of the 10 digits, each task rotated by its own angle (Mammoth's ``rot-mnist``)."""
from __future__ import annotations

from typing import Callable

from datasets.utils.domain_il import DomainILDataset, Rotation, domain_rng
from datasets.utils.mnist import MnistLike


class RotatedMNIST(MnistLike, DomainILDataset):
    """Task ``t``: all of MNIST rotated by an angle drawn uniformly in [0, 180) degrees from (seed, t).

    Reads ``<base_path>/MNIST/raw/`` like ``seq-mnist``."""

    NAME = "rot-mnist"
    N_TASKS = 20
    N_CLASSES_PER_TASK = 10
    DEFAULTS = {**MnistLike.DEFAULTS, "batch_size": 128}
    MAX_DEGREES = 180.0
    DOMAIN_ON_PIL = True  # PIL's rotation: ~100x cheaper than the tensor's affine grid on a CPU

    def angle(self, domain: int) -> float:
        return float(domain_rng(self.args.seed, domain).uniform(0.0, self.MAX_DEGREES))

    def domain_transform(self, domain: int) -> Callable:
        return Rotation(self.angle(domain))
