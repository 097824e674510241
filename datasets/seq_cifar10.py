"""Sequential CIFAR-10: 5 tasks x 2 classes, 32x32 (Mammoth's ``seq-cifar10``)."""
from __future__ import annotations

from typing import Callable

from torchvision import transforms

from datasets.utils.cifar import load_cifar
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.sources import ImageSource


class SequentialCIFAR10(ContinualDataset):
    """CIFAR-10 in 5 class-incremental tasks; reads ``<base_path>/CIFAR10/cifar-10-batches-py``."""

    NAME = "seq-cifar10"
    SETTING = "class-il"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    SIZE = (32, 32)
    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2615)
    DEFAULTS = {"backbone": "resnet18", "n_epochs": 50, "batch_size": 32}
    CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def load(self) -> tuple[ImageSource, ImageSource]:
        return load_cifar("cifar10", self.args.base_path)

    def train_ops(self) -> list[Callable]:
        return [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
