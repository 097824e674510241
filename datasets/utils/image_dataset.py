"""A ``ContinualDataset`` whose transforms are written as op lists (Mammoth's per-dataset tables).

Subclasses give :meth:`train_ops` / :meth:`test_ops` (PIL ops before ``ToTensor``); the base
appends ``ToTensor`` and the dataset's normalisation. Dataset YAMLs with ``TRANSFORM`` /
``TEST_TRANSFORM`` still take precedence (per instance). The ``not_aug`` view is the test
pipeline without normalisation, so that images of different sizes batch together.
"""
from __future__ import annotations

from typing import Callable

from torchvision import transforms
from torchvision.transforms import InterpolationMode

from datasets.utils.continual_dataset import ContinualDataset

BICUBIC = InterpolationMode.BICUBIC
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class OpListDataset(ContinualDataset):
    """Transforms = ``ops + [ToTensor, Normalize(MEAN, STD)]``; override the op lists."""

    def train_ops(self) -> list[Callable]:
        return []

    def test_ops(self) -> list[Callable]:
        return []

    def not_aug_ops(self) -> list[Callable]:
        return self.test_ops()

    def get_transform(self) -> Callable:
        if self.TRANSFORM is not None:
            return super().get_transform()
        return transforms.Compose(self.train_ops() + [transforms.ToTensor(), self.get_normalization_transform()])

    def get_test_transform(self) -> Callable:
        if self.TEST_TRANSFORM is not None:
            return super().get_test_transform()
        return transforms.Compose(self.test_ops() + [transforms.ToTensor(), self.get_normalization_transform()])

    def get_not_aug_transform(self) -> Callable:
        return transforms.Compose(self.not_aug_ops() + [transforms.ToTensor()])


def rrc_flip(size: int = 224, scale: tuple[float, float] = (0.08, 1.0)) -> list[Callable]:
    """RandomResizedCrop (bicubic) + horizontal flip, the usual ViT training augmentation."""
    return [transforms.RandomResizedCrop(size, scale=scale, interpolation=BICUBIC), transforms.RandomHorizontalFlip()]


def resize_crop(resize: int | tuple[int, int], crop: int = 224) -> list[Callable]:
    """Bicubic Resize then CenterCrop, the usual ViT test pipeline."""
    return [transforms.Resize(resize, interpolation=BICUBIC), transforms.CenterCrop(crop)]
