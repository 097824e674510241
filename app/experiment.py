"""One place that turns parsed flags into a ready experiment: dataset, backbone, model and device.

Used by the runner, the edit command, the benchmarks and the tests, so "args -> dataset -> backbone
-> model" is written once.
"""
from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from backbone import get_backbone
from datasets import get_dataset
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.transforms import check_on_image
from models import get_model_class
from models.utils.continual_model import ContinualModel
from utils import accelerator, distributed
from utils.errors import UserError
from utils.evaluate import check_test_coverage
from utils.resources import check_run_memory


@dataclass
class Experiment:
    """What a run trains and evaluates."""
    args: argparse.Namespace
    dataset: ContinualDataset
    model: ContinualModel
    device: torch.device
    test_set: dict = field(default_factory=dict)  # which classes have test images (utils.evaluate)


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator too


def get_device(name: Optional[str]) -> torch.device:
    """``--device`` (checked: a computing device this torch build and machine have) or the best available: the
    machine's accelerator, else cpu."""
    return accelerator.check_device(name) if name else accelerator.default_device()


def check_compatibility(model_cls: Any, dataset: Any) -> None:
    """The model must support the dataset's setting (class-il, task-il, domain-il, ...); a task-IL model also
    runs on a class-IL dataset (it is told the task at evaluation, as in Mammoth)."""
    if dataset.SETTING == "class-il" and "task-il" in model_cls.COMPATIBILITY:
        return
    if dataset.SETTING not in model_cls.COMPATIBILITY:
        raise UserError(f"model {model_cls.NAME} does not support the {dataset.SETTING} setting of {dataset.NAME} "
                        f"(it supports: {', '.join(model_cls.COMPATIBILITY)}); pick another model or dataset")


def check_every_task_has_data(dataset: Any) -> None:
    """Fail before training (not at task k) when a task of the split has no training images."""
    train, _ = dataset.splits
    for task in range(dataset.n_tasks):
        if len(dataset.task_indices(train, task)) == 0:
            start, end = dataset.get_offsets(task)
            raise UserError(f"{dataset.NAME}: task {task + 1} (classes {start}-{end - 1}) has no training images; "
                            f"check the labels of the data or the class split (--n_tasks/--classes_per_task)")


def check_transforms_on_data(dataset: Any) -> None:
    """The training and test transforms run on the first image of each split (a crop larger than the images,
    a transform that never makes a tensor: one line before training, not a data-loader traceback)."""
    train, test = dataset.splits
    for source, make, spec, name in ((train, dataset.get_transform, dataset.train_transform_spec, "TRANSFORM"),
                                     (test, dataset.get_test_transform, dataset.test_transform_spec, "TEST_TRANSFORM")):
        if len(source):
            where = f"{name} of the dataset config" if spec is not None else f"the {dataset.NAME} {name.lower()}"
            check_on_image(make(), source.image(0), where)


def build_experiment(args: argparse.Namespace, device: Optional[torch.device] = None,
                     before_model: Optional[Callable[[ContinualDataset], None]] = None) -> Experiment:
    """Seed, read the data (data errors come before anything else), check that the model fits the
    dataset, then build backbone and model on ``device`` (default: ``--device`` or the best available).

    ``before_model(dataset)`` runs after the data checks and before the backbone is built (which may
    download weights): the runner checks there that its output folders are writable."""
    device = device if device is not None else get_device(args.device)
    if args.seed is not None:
        set_random_seed(args.seed)
    dataset = get_dataset(args)
    dataset.splits  # read (or download) the data now: data errors come before any training output
    check_every_task_has_data(dataset)
    test_set = check_test_coverage(dataset, bool(getattr(args, "allow_incomplete_test_set", False)))
    check_run_memory(args, dataset)  # memory-shaped flags, before the backbone, buffer or any batch exists
    check_transforms_on_data(dataset)  # after the memory check: one image at --img_size fits
    model_cls = get_model_class(args.model)
    check_compatibility(model_cls, dataset)
    if args.distributed == "ddp" and model_cls.DDP_UNSUPPORTED:
        raise UserError(f"model {model_cls.NAME} does not support --distributed ddp: {model_cls.DDP_UNSUPPORTED}; "
                        f"run it in a single process")
    if before_model is not None:
        before_model(dataset)
    backbone = get_backbone(args, dataset.n_classes, dataset.img_size, dataset.in_chans)
    model = model_cls(backbone, dataset.get_loss(), args, dataset.get_transform(), dataset=dataset).to(device)
    distributed.broadcast_module(model)  # identical replicas even if construction drew different numbers
    return Experiment(args=args, dataset=dataset, model=model, device=device, test_set=test_set)
