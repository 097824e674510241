"""``ContinualDataset``: the base class of every benchmark (Mammoth's contract, per-instance config)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import transforms

from datasets.utils.debug import debug_cap
from datasets.utils.labels import cached_noisy_labels, labelled_mask
from datasets.utils.scenario import ClassIncrementalScenario
from datasets.utils.sources import ImageSource, TaskDataset, seed_worker
from datasets.utils.structure import INSTANCE_NAMES, declared_structure, install_views
from datasets.utils.transforms import build_transform
from mammoth_compat.dataset import MammothDatasetAPI
from utils import accelerator, distributed, seeding
from utils.errors import UserError

PREFETCH_BATCHES = 4  # batches each loader worker prepares ahead
NUM_WORKERS_ENV = "CL_DEFAULT_NUM_WORKERS"  # overrides the default of --num_workers (the test suite sets 0)


def default_num_workers() -> int:
    """min(8, CPUs available to this process / processes per node) (``--num_workers`` when not given)."""
    import os
    if os.environ.get(NUM_WORKERS_ENV):
        return int(os.environ[NUM_WORKERS_ENV])
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, cpus // max(1, per_node)))


def no_view(img: Any) -> torch.Tensor:
    """The placeholder ``not_aug`` view of models that never read it (nothing decoded twice)."""
    return torch.zeros(0)


class ContinualDataset(MammothDatasetAPI):
    """A benchmark split into tasks of disjoint classes.

    Subclasses set ``NAME``, ``SETTING``, ``N_TASKS``, ``N_CLASSES_PER_TASK`` (int or list),
    ``SIZE`` (H, W), optionally ``MEAN``/``STD``, ``CLASS_NAMES`` and ``DEFAULTS`` (parser defaults such as
    ``backbone``, ``n_epochs``, ``batch_size``), implement :meth:`load`, and declare their transforms as
    op lists (:meth:`train_ops`, :meth:`test_ops`: PIL ops before ``ToTensor`` and the normalisation).
    The data is loaded once; :meth:`get_data_loaders` then hands out one task at a time.
    The run's values live in lower-case attributes (``n_tasks``, ``n_classes_per_task``, ``n_classes``,
    ``size``, ``mean``, ``std``, ``class_names``, ``in_chans``, ``train_transform_spec``/``test_transform_spec``:
    a dataset YAML's ``TRANSFORM``/``TEST_TRANSFORM``); the UPPER_CASE class attributes are never changed
    (see :mod:`datasets.utils.structure`).
    """

    NAME: str = ""
    SETTING: str = "class-il"
    N_TASKS: int = 0
    N_CLASSES_PER_TASK: int | list[int] = 0
    N_CLASSES: Optional[int] = None  # derived from N_CLASSES_PER_TASK when not declared
    SIZE: tuple[int, int] = (32, 32)
    MEAN: Optional[tuple[float, ...]] = None
    STD: Optional[tuple[float, ...]] = None
    TRANSFORM: Optional[list] = None
    TEST_TRANSFORM: Optional[list] = None
    CLASS_NAMES: Optional[list[str]] = None
    IN_CHANS: int = 3
    build_not_aug = True  # the model sets False when it never reads the not-augmented view (no double decode)
    DEFAULTS: dict[str, Any] = {}
    SHUFFLE_TRAIN: bool = True  # False: a stream whose order is the benchmark (general-continual)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        install_views(cls)

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.n_tasks: int = 0
        self.n_classes_per_task: int | list[int] = 0
        self.n_classes: Optional[int] = None
        self.size: tuple[int, int] = (32, 32)
        self.mean: Optional[tuple[float, ...]] = None
        self.std: Optional[tuple[float, ...]] = None
        self.train_transform_spec: Optional[list] = None
        self.test_transform_spec: Optional[list] = None
        self.class_names: Optional[list[str]] = None
        self.in_chans: int = 3
        vars(self).update(declared_structure(type(self)))
        for key, value in (getattr(args, "dataset_structure", None) or {}).items():
            if key == "SIZE" and isinstance(value, int):
                value = (value, value)
            setattr(self, INSTANCE_NAMES[key], tuple(value) if key in ("SIZE", "MEAN", "STD") else value)
        self._configure()
        self._check_channels()
        self.n_domains = self.n_tasks  # tasks before --joint collapses them
        if getattr(args, "joint", False):
            self._collapse_to_one_task()
        self.scenario = self.build_scenario()
        class_seq, task_seq = getattr(args, "custom_class_order", None), getattr(args, "custom_task_order", None)
        if class_seq or task_seq:
            if not hasattr(self.scenario, "reorder"):
                raise UserError(f"{self.NAME}: --custom_class_order/--custom_task_order need a class-incremental "
                                f"dataset (this one is {self.SETTING})")
            try:
                self.scenario = self.scenario.reorder(class_seq, task_seq)
            except ValueError as exc:
                raise UserError(f"{self.NAME}: {exc}") from None
            self.n_classes_per_task = list(self.scenario.classes_per_task)
        declared = self.n_classes
        if declared is not None and declared != self.scenario.n_classes:
            raise UserError(f"{self.NAME}: N_CLASSES={declared} but the tasks hold {self.scenario.n_classes} classes; "
                            f"make N_CLASSES equal to the sum of N_CLASSES_PER_TASK in the dataset config")
        self.n_classes = self.scenario.n_classes
        self.c_task = -1
        self._shuffled_loaders: dict[int, int] = {}  # task -> shuffled loaders made for it (seeds their order)
        self.train_loader: Optional[DataLoader] = None
        self.test_loaders: list[DataLoader] = []
        self._splits: Optional[tuple[ImageSource, ImageSource]] = None
        self._true_train_targets: Optional[np.ndarray] = None  # under --noise_rate
        self._labelled: Optional[np.ndarray] = None  # under --label_perc_by_*

    @property
    def extra_return_fields(self) -> tuple[str, ...]:
        """Names of the extra fields of a train item, passed to ``observe`` as keywords (Mammoth's contract)."""
        return ("true_labels",) if getattr(self.args, "noise_rate", 0) else ()

    def _check_channels(self) -> None:
        """MEAN/STD (and Normalize in the transforms) hold one value per image channel."""
        where = f"the {self.NAME} dataset config" + (f" '{self.args.dataset_config}'"
                                                     if getattr(self.args, "dataset_config", None) else "")
        for key in ("MEAN", "STD"):
            value = getattr(self, INSTANCE_NAMES[key])
            if value is not None and len(value) != self.in_chans:
                raise UserError(f"{key} of {where} has {len(value)} values but the images have {self.in_chans} "
                                f"channel(s); give one value per channel")
        for key in ("TRANSFORM", "TEST_TRANSFORM"):
            if getattr(self, INSTANCE_NAMES[key]) is not None:
                build_transform(list(getattr(self, INSTANCE_NAMES[key])), f"{key} of {where}", channels=self.in_chans)

    # ----- to implement (load, and the transforms' op lists) -----------------------------------------
    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the dataset's own flags (none by default)."""
        return parser

    def _configure(self) -> None:
        """Hook to derive structure from the args before the scenario is built (e.g. seq-custom)."""

    def load(self) -> tuple[ImageSource, ImageSource]:
        """Read (download if needed) the train and test splits with their original labels."""
        raise NotImplementedError

    def train_ops(self) -> list[Callable]:
        """Training augmentation: PIL ops applied before ``ToTensor`` and the normalisation."""
        return []

    def test_ops(self) -> list[Callable]:
        """Test-time PIL ops (resize, crop) before ``ToTensor`` and the normalisation."""
        return []

    def not_aug_ops(self) -> list[Callable]:
        """PIL ops of the 'not augmented' view (default: the test ops, so images of any size batch together)."""
        return self.test_ops()

    # ----- transforms (from the op lists, or a dataset YAML's TRANSFORM/TEST_TRANSFORM) ---------------
    def get_transform(self) -> Callable:
        """Train-time transform (PIL -> normalised tensor)."""
        if self.train_transform_spec is not None:
            return build_transform(list(self.train_transform_spec), f"{self.NAME} TRANSFORM")
        return transforms.Compose(self.train_ops() + [transforms.ToTensor(), self.get_normalization_transform()])

    def get_test_transform(self) -> Callable:
        """Test-time transform (PIL -> normalised tensor)."""
        if self.test_transform_spec is not None:
            return build_transform(list(self.test_transform_spec), f"{self.NAME} TEST_TRANSFORM")
        return transforms.Compose(self.test_ops() + [transforms.ToTensor(), self.get_normalization_transform()])

    def get_not_aug_transform(self) -> Callable:
        """The 'not augmented' view returned with each train sample (an unnormalised tensor)."""
        return transforms.Compose(self.not_aug_ops() + [transforms.ToTensor()])

    def get_normalization_transform(self) -> Callable:
        if self.mean is None:
            return transforms.Lambda(lambda x: x)
        return transforms.Normalize(self.mean, self.std)

    def get_loss(self) -> Callable:
        return F.cross_entropy

    def build_scenario(self) -> Any:
        """The label layout of the tasks: disjoint class ranges (class-IL/task-IL) unless overridden."""
        return ClassIncrementalScenario.build(self.n_classes_per_task, self.n_tasks,
                                              permute=bool(self.args.permute_classes), seed=self.args.seed)

    def _collapse_to_one_task(self) -> None:
        """``--joint 1`` (Mammoth's meaning): one task holding every class, trained on all the data at once."""
        per_task = self.n_classes_per_task
        total = per_task * self.n_tasks if isinstance(per_task, (int, np.integer)) else sum(per_task)
        self.n_classes_per_task, self.n_tasks = int(total), 1

    # ----- provided -------------------------------------------------------------------------------
    @property
    def img_size(self) -> int:
        return int(self.size[0])

    def get_offsets(self, task: Optional[int] = None) -> tuple[int, int]:
        """``(start, end)`` label range of ``task`` (default: the current task); ``task = n_tasks`` gives the empty
        range after the last class (Mammoth's models read its start as the end of every task's classes)."""
        task = self.c_task if task is None else task
        if task == self.scenario.n_tasks:
            return self.scenario.n_classes, self.scenario.n_classes
        return self.scenario.offsets(task)

    @property
    def splits(self) -> tuple[ImageSource, ImageSource]:
        """Train and test sources with scenario labels; the test source is the validation split if asked."""
        if self._splits is None:
            train, test = self.load()
            for name, src in (("train", train), ("test", test)):
                if len(src) and (src.targets.min() < 0 or src.targets.max() >= self.n_classes):
                    raise UserError(f"{self.NAME}: {name} labels must lie in [0, {self.n_classes}), found "
                                    f"[{src.targets.min()}, {src.targets.max()}]; check the data or --n_tasks")
            train = ImageSource(train.data, self.scenario.relabel(train.targets))
            test = ImageSource(test.data, self.scenario.relabel(test.targets))
            if self.args.validation:
                train, test = self._validation_split(train, self.args.validation)
            if getattr(self.args, "noise_rate", 0):
                self._true_train_targets = train.targets
                noisy = cached_noisy_labels(self.scenario.original_labels(train.targets), self.n_classes, self.args,
                                            self.NAME)
                train = ImageSource(train.data, self.scenario.relabel(noisy))
            self._splits = (train, test)
            self._labelled = self._labelled_mask(train.targets)
        return self._splits

    def _labelled_mask(self, targets: np.ndarray) -> Optional[np.ndarray]:
        """``--label_perc_by_task``/``--label_perc_by_class``: which training samples keep their label."""
        by_task = getattr(self.args, "label_perc_by_task", 1.0)
        by_class = getattr(self.args, "label_perc_by_class", 1.0)
        keep = np.ones(len(targets), dtype=bool)
        if by_task < 1:
            tasks = np.searchsorted(np.cumsum(self.scenario.classes_per_task), targets, side="right")
            keep &= labelled_mask(tasks, by_task, self.args.seed)
        if by_class < 1:
            keep &= labelled_mask(targets, by_class, self.args.seed)
        return None if keep.all() else keep

    def _validation_split(self, train: ImageSource, percent: float) -> tuple[ImageSource, ImageSource]:
        """Mammoth's per-class split: ``ceil(n * percent / 100)`` images of each class (at most n - 1)."""
        rng = np.random.RandomState(self.args.seed if self.args.seed is not None else 0)
        val_idx = []
        for c in np.unique(train.targets):
            idx = np.flatnonzero(train.targets == c)
            n_val = min(len(idx) - 1, int(np.ceil(round(len(idx) * percent / 100.0, 6))))
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
        indices = self.task_indices(train, task)
        source = train if self._labelled is None else ImageSource(train.data, np.where(self._labelled, train.targets, -1))
        not_aug = self.get_not_aug_transform() if self.build_not_aug else no_view
        return TaskDataset(source, indices, self.get_transform(), not_aug, extra_targets=self._true_train_targets)

    def plain_train_dataset(self, task: int) -> TaskDataset:
        """Train samples of ``task`` with the test transform (no augmentation), in the split's order: (x, label)."""
        train, _ = self.splits
        return TaskDataset(train, self.task_indices(train, task), self.get_test_transform())

    def test_dataset(self, task: int) -> TaskDataset:
        """Test samples of ``task`` (of tasks 0..task with ``--validation_mode complete``)."""
        _, test = self.splits
        cumulative = bool(self.args.validation) and self.args.validation_mode == "complete"
        return TaskDataset(test, self.task_indices(test, task, cumulative), self.get_test_transform())

    def make_loader(self, dataset: torch.utils.data.Dataset, shuffle: bool,
                    batch_size: Optional[int] = None, counted: bool = True) -> DataLoader:
        """A seeded loader, identical on every rank whatever the shard sizes and ``--num_workers``.

        A shuffled loader's order and each sample's augmentation come from the stream (seed, task,
        ``loader<n>``) (n-th shuffled loader of the task): a sample's augmentation depends only on its index
        and the pass, never on which rank or worker loads it; the global RNGs are not touched.
        ``counted=False``: a shuffled loader with the stream of the next one that does not count as one (a look at
        the images as training sees them that changes no later draw).
        """
        if batch_size is None and not shuffle:  # evaluation: larger batches, same results
            batch_size = getattr(self.args, "eval_batch_size", None) or max(self.args.batch_size, 128)
        batch_size = batch_size or self.args.batch_size
        workers = default_num_workers() if self.args.num_workers is None else self.args.num_workers
        device = getattr(self.args, "device", None) or accelerator.default_device()
        task = max(self.c_task, 0)
        n = self._shuffled_loaders.get(task, 0) if shuffle else 0
        seed = seeding.derive_seed(seeding.run_seed(self.args), task, f"loader{n}" if shuffle else "test_loader")
        if getattr(self.args, "debug_mode", False):  # the single place where --debug_mode caps a pass
            dataset = debug_cap(dataset, shuffle, seed)
        common = dict(num_workers=workers, worker_init_fn=seed_worker if workers else None,
                      pin_memory=accelerator.pin_memory(device),
                      # train loaders are iterated once per epoch: keep their workers; test loaders are kept for
                      # the whole run (one per task), persistent workers there would pile up idle processes
                      persistent_workers=bool(workers) and shuffle and counted,
                      prefetch_factor=PREFETCH_BATCHES if workers else None,
                      generator=torch.Generator().manual_seed(seed))  # workers' base seed: not the global RNG
        if shuffle:
            self._shuffled_loaders[task] = n + int(counted)
            sampler = distributed.ShardedBatchSampler(len(dataset), batch_size, shuffle=True, seed=seed,
                                                      drop_last=bool(self.args.drop_last), sample_seeds=True,
                                                      sized=dataset)  # a model may replace the samples
            return DataLoader(dataset, batch_sampler=sampler, **common)
        if distributed.world_size() > 1:  # each rank evaluates a disjoint shard; counts are summed
            return DataLoader(dataset, batch_size=batch_size, sampler=distributed.ShardSampler(len(dataset)),
                              **common)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **common)

    def get_data_loaders(self) -> tuple[DataLoader, DataLoader]:
        """Advance to the next task: its train loader and its test loader (appended to ``test_loaders``)."""
        if self.c_task + 1 >= self.n_tasks:
            raise RuntimeError(f"{self.NAME} has only {self.n_tasks} tasks")
        self.c_task += 1
        train_ds = self.train_dataset(self.c_task)
        if len(train_ds) == 0:
            raise UserError(f"{self.NAME}: task {self.c_task} has no training images (classes "
                            f"{self.get_offsets()}); check the class split")
        shuffle = self.SHUFFLE_TRAIN or bool(getattr(self.args, "joint", False))
        self.train_loader = self.make_loader(train_ds, shuffle=shuffle, batch_size=self.args.batch_size)
        test_loader = self.make_loader(self.test_dataset(self.c_task), shuffle=False)
        self.test_loaders.append(test_loader)
        return self.train_loader, test_loader

    def get_class_names(self) -> Optional[list[str]]:
        """Class names in scenario order, if the dataset has them."""
        names = self.class_names
        if names is None:
            return None
        if self.scenario.class_order is None:
            return list(names)
        ordered = [""] * len(names)
        for old, new in enumerate(self.scenario.class_order):
            ordered[new] = names[old]
        return ordered
install_views(ContinualDataset)
