"""Benchmarks: one file per dataset, found by the ``NAME`` of its ``ContinualDataset`` subclass."""
from __future__ import annotations

import argparse

from datasets.utils.continual_dataset import ContinualDataset
from utils.registry import Registry


def _dataset_names(obj: object) -> list[str]:
    if isinstance(obj, type) and issubclass(obj, ContinualDataset) and obj is not ContinualDataset \
            and getattr(obj, "NAME", ""):
        return [obj.NAME]
    return []


DATASETS = Registry("dataset", "datasets", _dataset_names)


def get_dataset_class(name: str) -> type[ContinualDataset]:
    return DATASETS.get(name)


def get_dataset(args: argparse.Namespace) -> ContinualDataset:
    """Instantiate the dataset named by ``args.dataset``."""
    return get_dataset_class(args.dataset)(args)
