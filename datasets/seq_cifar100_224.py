"""Sequential CIFAR-100 at 224x224 for pretrained ViTs (Mammoth's ``seq-cifar100-224``)."""
from __future__ import annotations

from typing import Callable

from torchvision import transforms

from datasets.utils.cifar import CIFAR100_CLASSES, load_cifar
from datasets.utils.image_dataset import BICUBIC, IMAGENET_MEAN, IMAGENET_STD, OpListDataset, rrc_flip
from datasets.utils.sources import ImageSource


class SequentialCIFAR100224(OpListDataset):
    """CIFAR-100, 10 x 10 classes, upsampled from 32x32 to 224x224 by the transforms.

    ``datasets/configs/seq-cifar100-224/default.yaml`` is applied automatically;
    ``--dataset_config second_order_ta`` gives the ITA/IEL setting (0.5/0.5 normalisation,
    Resize 256 + CenterCrop 224 at test time, AdamW). The ``not_aug`` images stay 32x32.
    """

    NAME = "seq-cifar100-224"
    SETTING = "class-il"
    N_TASKS = 10
    N_CLASSES_PER_TASK = 10
    SIZE = (224, 224)
    MEAN = IMAGENET_MEAN
    STD = IMAGENET_STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 20, "batch_size": 128}
    CLASS_NAMES = list(CIFAR100_CLASSES)

    def load(self) -> tuple[ImageSource, ImageSource]:
        return load_cifar("cifar100", self.args.base_path)

    def train_ops(self) -> list[Callable]:
        return rrc_flip(224)

    def test_ops(self) -> list[Callable]:
        return [transforms.Resize(224, interpolation=BICUBIC)]

    def not_aug_ops(self) -> list[Callable]:
        return []
