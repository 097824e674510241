"""Sequential CIFAR-100: 10 tasks x 10 classes, 32x32 (Mammoth's ``seq-cifar100``)."""
from __future__ import annotations

from typing import Callable

from torchvision import transforms

from datasets.utils.cifar import CIFAR100_CLASSES, load_cifar
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.sources import ImageSource


class SequentialCIFAR100(ContinualDataset):
    """CIFAR-100 in 10 class-incremental tasks (configs ``5tasks``, ``20tasks``).

    Reads ``<base_path>/CIFAR100/cifar-100-python/{train,test}``; classes in the official
    (alphabetical) fine-label order.
    """

    NAME = "seq-cifar100"
    SETTING = "class-il"
    N_TASKS = 10
    N_CLASSES_PER_TASK = 10
    SIZE = (32, 32)
    MEAN = (0.5071, 0.4867, 0.4408)
    STD = (0.2675, 0.2565, 0.2761)
    DEFAULTS = {"backbone": "resnet18", "n_epochs": 50, "batch_size": 32}
    CLASS_NAMES = list(CIFAR100_CLASSES)

    def load(self) -> tuple[ImageSource, ImageSource]:
        return load_cifar("cifar100", self.args.base_path)

    def train_ops(self) -> list[Callable]:
        return [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
