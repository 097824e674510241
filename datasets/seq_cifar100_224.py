"""Sequential CIFAR-100 at 224x224 for pretrained ViTs (Mammoth's ``seq-cifar100-224``)."""
from __future__ import annotations

import argparse
from typing import Callable, Optional

import torch
from torchvision import transforms

from datasets.utils.cifar import CIFAR100_CLASSES, load_cifar
from datasets.utils.gpu_augment import DeviceAugmentedLoader, DeviceRRCFlip, rrc_flip_spec
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.transforms import BICUBIC, IMAGENET_MEAN, IMAGENET_STD, rrc_flip
from datasets.utils.sources import ImageSource
from utils import accelerator, seeding


class SequentialCIFAR100224(ContinualDataset):
    """CIFAR-100, 10 x 10 classes, upsampled from 32x32 to 224x224 by the transforms.

    ``datasets/configs/seq-cifar100-224/default.yaml`` is applied automatically;
    ``--dataset_config second_order_ta`` gives the ITA/IEL setting (0.5/0.5 normalisation,
    Resize 256 + CenterCrop 224 at test time, AdamW). The ``not_aug`` images stay 32x32.
    ``--transform_type strong`` (Mammoth's dataset flag) adds ColorJitter(0.4, 0.4, 0.4, 0.1) and
    RandomRotation(15) before ``ToTensor`` in the training pipeline.
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

    # ----- device-side augmentation (docs/speed.md) -------------------------------------------------
    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--transform_type", type=str, default="weak", choices=["weak", "strong"],
                            help="training augmentation: weak (crop + flip) or strong (+ colour jitter, rotation; "
                                 "always on the CPU)")
        parser.add_argument("--gpu_augmentation", type=str, default="auto", choices=["auto", "0", "1"],
                            help="RandomResizedCrop + flip of the train images on the device (kornia) instead of "
                                 "in the loader workers; auto: on with CUDA and the default train transform")
        return parser

    def augment_device(self) -> Optional[torch.device]:
        """The device that augments the train batches, or None (the CPU pipeline does)."""
        choice = str(getattr(self.args, "gpu_augmentation", "0"))
        if choice == "0" or self.device_augmentation() is None:
            return None
        name = getattr(self.args, "device", None)
        device = torch.device(name) if name else accelerator.default_device()
        return device if choice == "1" or accelerator.is_accelerator(device) else None

    def device_augmentation(self) -> Optional[dict]:
        """The device pipeline equivalent to the train transform (None: the transform has other ops)."""
        if self.strong():
            return None
        return rrc_flip_spec(None if self.train_transform_spec is None else list(self.train_transform_spec), self.mean, self.std)

    def strong(self) -> bool:
        return getattr(self.args, "transform_type", "weak") == "strong"

    def get_transform(self) -> Callable:
        if self.augment_device() is not None:
            return transforms.ToTensor()  # the 32x32 source image; crop, flip and normalisation run on the device
        base = super().get_transform()
        if not self.strong():
            return base
        ops = list(base.transforms) if isinstance(base, transforms.Compose) else [base]
        at = next((i for i, op in enumerate(ops) if isinstance(op, transforms.ToTensor)), len(ops))
        strong = [transforms.ColorJitter(0.4, 0.4, 0.4, 0.1), transforms.RandomRotation(15)]
        return transforms.Compose(ops[:at] + strong + ops[at:])

    def make_loader(self, dataset, shuffle: bool, batch_size: Optional[int] = None, counted: bool = True):
        loader = super().make_loader(dataset, shuffle, batch_size, counted)
        device = self.augment_device()
        if not shuffle or device is None:
            return loader
        seed = seeding.derive_seed(loader.batch_sampler.seed, 0, "device_augment")  # the loader's stream, no global draw
        augment = DeviceRRCFlip(**self.device_augmentation(), seed=seed)
        return DeviceAugmentedLoader(loader, augment, device)
