"""Sequential CIFAR-10 at 224x224 for pretrained ViTs (Mammoth's ``seq-cifar10-224``)."""
from __future__ import annotations

from typing import Callable

from torchvision import transforms

from datasets.seq_cifar10 import SequentialCIFAR10
from datasets.utils.cifar import load_cifar
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.sources import ImageSource


class SequentialCIFAR10224(ContinualDataset):
    """CIFAR-10, 5 x 2 classes, upsampled from 32x32 to 224x224 by the transforms (Resize 224, RandomCrop 224
    with padding 28, horizontal flip; test: Resize 224), CIFAR-10 normalisation. The ``not_aug`` images stay
    32x32. Reads ``<base_path>/CIFAR10/cifar-10-batches-py`` like ``seq-cifar10``."""

    NAME = "seq-cifar10-224"
    SETTING = "class-il"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    SIZE = (224, 224)
    MEAN, STD = SequentialCIFAR10.MEAN, SequentialCIFAR10.STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 50, "batch_size": 32}
    CLASS_NAMES = list(SequentialCIFAR10.CLASS_NAMES)

    def load(self) -> tuple[ImageSource, ImageSource]:
        return load_cifar("cifar10", self.args.base_path)

    def train_ops(self) -> list[Callable]:
        return [transforms.Resize(224), transforms.RandomCrop(224, padding=28), transforms.RandomHorizontalFlip()]

    def test_ops(self) -> list[Callable]:
        return [transforms.Resize(224)]

    def not_aug_ops(self) -> list[Callable]:
        return []
