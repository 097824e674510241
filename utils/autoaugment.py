"""Mammoth's import path ``utils.autoaugment``: the AutoAugment policies of :mod:`mammoth_compat.kornia_utils`."""
from mammoth_compat.kornia_utils import CIFAR10Policy, ImageNetPolicy, SVHNPolicy  # noqa: F401
