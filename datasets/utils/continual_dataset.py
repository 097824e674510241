"""``ContinualDataset``: the base class of every benchmark (Mammoth's contract, per-instance config)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

from datasets.utils.scenario import ClassIncrementalScenario
from datasets.utils.sources import ImageSource, TaskDataset, seed_worker
from datasets.utils.transforms import build_transform
from utils import distributed, seeding
from utils.errors import UserError

STRUCTURE_KEYS = ("N_TASKS", "N_CLASSES_PER_TASK", "N_CLASSES", "SIZE", "MEAN", "STD", "TRANSFORM", "TEST_TRANSFORM")


class ContinualDataset:
    """A benchmark split into tasks of disjoint classes.

    Subclasses set ``NAME``, ``SETTING``, ``N_TASKS``, ``N_CLASSES_PER_TASK`` (int or list),
    ``SIZE`` (H, W), optionally ``MEAN``/``STD`` and ``DEFAULTS`` (parser defaults such as
    ``backbone``, ``n_epochs``, ``batch_size``), and implement :meth:`load` plus the transforms.
    The data is loaded once; :meth:`get_data_loaders` then hands out one task at a time.
    Dataset YAML structure keys override the class attributes on the instance only.
    """

    NAME: str = ""
    SETTING: str = "class-il"
    N_TASKS: int = 0
    N_CLASSES_PER_TASK: int | list[int] = 0
    SIZE: tuple[int, int] = (32, 32)
    MEAN: Optional[tuple[float, ...]] = None
    STD: Optional[tuple[float, ...]] = None
    TRANSFORM: Optional[list] = None
    TEST_TRANSFORM: Optional[list] = None
    DEFAULTS: dict[str, Any] = {}
    IN_CHANS: int = 3

    def __init__(self, args: argparse.Namespace):
        self.args = args
        for key, value in (getattr(args, "dataset_structure", None) or {}).items():
            setattr(self, key, tuple(value) if key in ("SIZE", "MEAN", "STD") else value)
        self._configure()
        self.scenario = ClassIncrementalScenario.build(self.N_CLASSES_PER_TASK, self.N_TASKS,
                                                       permute=bool(args.permute_classes), seed=args.seed)
        declared = getattr(self, "N_CLASSES", None)
        if declared is not None and declared != self.scenario.n_classes:
            raise UserError(f"{self.NAME}: N_CLASSES={declared} but the tasks hold {self.scenario.n_classes} classes")
        self.N_CLASSES = self.scenario.n_classes
        self.c_task = -1
        self._shuffled_loaders: dict[int, int] = {}  # task -> shuffled loaders made for it (seeds their order)
        self.train_loader: Optional[DataLoader] = None
        self.test_loaders: list[DataLoader] = []
        self._splits: Optional[tuple[ImageSource, ImageSource]] = None

    # ----- to implement ---------------------------------------------------------------------------
    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the dataset's own flags (none by default)."""
        return parser

    def _configure(self) -> None:
        """Hook to derive structure from the args before the scenario is built (e.g. seq-custom)."""

    def load(self) -> tuple[ImageSource, ImageSource]:
        """Read (download if needed) the train and test splits with their original labels."""
        raise NotImplementedError

    def get_transform(self) -> Callable:
        """Train-time transform (PIL -> normalised tensor)."""
        if self.TRANSFORM is not None:
            return build_transform(list(self.TRANSFORM), f"{self.NAME} TRANSFORM")
        return transforms.Compose([transforms.ToTensor(), self.get_normalization_transform()])

    def get_test_transform(self) -> Callable:
        """Test-time transform (PIL -> normalised tensor)."""
        if self.TEST_TRANSFORM is not None:
            return build_transform(list(self.TEST_TRANSFORM), f"{self.NAME} TEST_TRANSFORM")
        return transforms.Compose([transforms.ToTensor(), self.get_normalization_transform()])

    def get_not_aug_transform(self) -> Callable:
        """The 'not augmented' view returned with each train sample (an unnormalised tensor)."""
        return transforms.ToTensor()

    def get_normalization_transform(self) -> Callable:
        if self.MEAN is None:
            return transforms.Lambda(lambda x: x)
        return transforms.Normalize(self.MEAN, self.STD)

    def get_loss(self) -> Callable:
        return F.cross_entropy

    # ----- provided -------------------------------------------------------------------------------
    @property
    def img_size(self) -> int:
        return int(self.SIZE[0])

    def get_offsets(self, task: Optional[int] = None) -> tuple[int, int]:
        """``(start, end)`` label range of ``task`` (default: the current task)."""
        return self.scenario.offsets(self.c_task if task is None else task)

    @property
    def splits(self) -> tuple[ImageSource, ImageSource]:
        """Train and test sources with scenario labels; the test source is the validation split if asked."""
        if self._splits is None:
            train, test = self.load()
            for name, src in (("train", train), ("test", test)):
                if len(src) and (src.targets.min() < 0 or src.targets.max() >= self.N_CLASSES):
                    raise UserError(f"{self.NAME}: {name} labels must lie in [0, {self.N_CLASSES}), found "
                                    f"[{src.targets.min()}, {src.targets.max()}]; check the data or --n_tasks")
            train = ImageSource(train.data, self.scenario.relabel(train.targets))
            test = ImageSource(test.data, self.scenario.relabel(test.targets))
            if self.args.validation:
                train, test = self._validation_split(train, self.args.validation)
            self._splits = (train, test)
        return self._splits

    def _validation_split(self, train: ImageSource, fraction: float) -> tuple[ImageSource, ImageSource]:
        rng = np.random.RandomState(self.args.seed if self.args.seed is not None else 0)
        val_idx = []
        for c in np.unique(train.targets):
            idx = np.flatnonzero(train.targets == c)
            n_val = max(1, int(round(len(idx) * fraction))) if len(idx) > 1 else 0
            val_idx.extend(rng.permutation(idx)[:n_val].tolist())
        mask = np.zeros(len(train), dtype=bool)
        mask[val_idx] = True
        return train.subset(np.flatnonzero(~mask)), train.subset(np.flatnonzero(mask))

    def task_indices(self, source: ImageSource, task: int, cumulative: bool = False) -> np.ndarray:
        start, end = self.get_offsets(task)
        if cumulative:
            start = 0
        return np.flatnonzero((source.targets >= start) & (source.targets < end))

    def train_dataset(self, task: int) -> TaskDataset:
        """Train samples of ``task``: (augmented, label, not_augmented)."""
        train, _ = self.splits
        return TaskDataset(train, self.task_indices(train, task), self.get_transform(), self.get_not_aug_transform())

    def test_dataset(self, task: int) -> TaskDataset:
        """Test samples of ``task`` (of tasks 0..task with ``--validation_mode complete``)."""
        _, test = self.splits
        cumulative = bool(self.args.validation) and self.args.validation_mode == "complete"
        return TaskDataset(test, self.task_indices(test, task, cumulative), self.get_test_transform())

    def make_loader(self, dataset: torch.utils.data.Dataset, shuffle: bool,
                    batch_size: Optional[int] = None) -> DataLoader:
        """A seeded loader, identical on every rank whatever the shard sizes and ``--num_workers``.

        A shuffled loader's order and each sample's augmentation come from the stream (seed, task,
        ``loader<n>``) (n-th shuffled loader of the task): a sample's augmentation depends only on its index
        and the pass, never on which rank or worker loads it; the global RNGs are not touched.
        """
        if batch_size is None and not shuffle:  # evaluation: larger batches, same results
            batch_size = getattr(self.args, "eval_batch_size", None) or max(self.args.batch_size, 128)
        batch_size = batch_size or self.args.batch_size
        workers = self.args.num_workers
        task = max(self.c_task, 0)
        n = self._shuffled_loaders.get(task, 0) if shuffle else 0
        seed = seeding.derive_seed(seeding.run_seed(self.args), task, f"loader{n}" if shuffle else "test_loader")
        common = dict(num_workers=workers, worker_init_fn=seed_worker if workers else None,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))  # workers' base seed: not the global RNG
        if shuffle:
            self._shuffled_loaders[task] = n + 1
            sampler = distributed.ShardedBatchSampler(len(dataset), batch_size, shuffle=True, seed=seed,
                                                      drop_last=bool(self.args.drop_last), sample_seeds=True)
            return DataLoader(dataset, batch_sampler=sampler, **common)
        if distributed.world_size() > 1:  # each rank evaluates a disjoint shard; counts are summed
            return DataLoader(dataset, batch_size=batch_size, sampler=distributed.ShardSampler(len(dataset), False),
                              **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)

    def get_data_loaders(self) -> tuple[DataLoader, DataLoader]:
        """Advance to the next task: its train loader and its test loader (appended to ``test_loaders``)."""
        if self.c_task + 1 >= self.N_TASKS:
            raise RuntimeError(f"{self.NAME} has only {self.N_TASKS} tasks")
        self.c_task += 1
        train_ds = self.train_dataset(self.c_task)
        if len(train_ds) == 0:
            raise UserError(f"{self.NAME}: task {self.c_task} has no training images (classes "
                            f"{self.get_offsets()}); check the class split")
        self.train_loader = self.make_loader(train_ds, shuffle=True)
        test_loader = self.make_loader(self.test_dataset(self.c_task), shuffle=False)
        self.test_loaders.append(test_loader)
        return self.train_loader, test_loader

    def get_class_names(self) -> Optional[list[str]]:
        """Class names in scenario order, if the dataset has them."""
        names = getattr(self, "CLASS_NAMES", None)
        if names is None:
            return None
        if self.scenario.class_order is None:
            return list(names)
        ordered = [""] * len(names)
        for old, new in enumerate(self.scenario.class_order):
            ordered[new] = names[old]
        return ordered
