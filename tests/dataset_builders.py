"""Helpers for the dataset tests: build miniature datasets in their real on-disk formats, check task splits."""
from __future__ import annotations

import gzip
import os
import pickle
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from datasets import get_dataset
from app.config import parse_args


def dataset_for(base_path, *argv: str):
    """A dataset instance built through the real config layers (sgd model, no network)."""
    return get_dataset(parse_args(["--model", "sgd", "--lr", "0.1", "--batch_size", "4", "--base_path",
                                   str(base_path), *argv]))


def expected_offsets(per_task: Sequence[int]) -> list[tuple[int, int]]:
    bounds = np.concatenate([[0], np.cumsum(per_task)]).tolist()
    return [(bounds[t], bounds[t + 1]) for t in range(len(per_task))]


def check_tasks(ds, per_task: Sequence[int], raw_train: Optional[np.ndarray] = None,
                raw_test: Optional[np.ndarray] = None, order: Optional[np.ndarray] = None) -> None:
    """Number of tasks, classes per task, label ranges per task, and the class order."""
    assert ds.N_TASKS == len(per_task) and ds.N_CLASSES == sum(per_task)
    assert [ds.get_offsets(t) for t in range(ds.N_TASKS)] == expected_offsets(per_task)
    train, test = ds.splits
    for src, raw in ((train, raw_train), (test, raw_test)):
        if raw is not None:
            mapping = np.arange(ds.N_CLASSES) if order is None else order
            assert src.targets.tolist() == mapping[np.asarray(raw)].tolist()
    for t, (start, end) in enumerate(expected_offsets(per_task)):
        labels = np.unique(train.targets[ds.task_indices(train, t)])
        assert labels.tolist() == list(range(start, end))
        test_labels = np.unique(test.targets[ds.task_indices(test, t)])
        assert set(test_labels.tolist()) <= set(range(start, end)) and len(test_labels) > 0


def sample_shapes(ds) -> tuple[tuple, tuple, tuple]:
    """Shapes of (train image, not-augmented image, test image) of the first task's first samples."""
    x, _, not_aug = ds.train_dataset(0)[0]
    x_test, _ = ds.test_dataset(0)[0]
    return tuple(x.shape), tuple(not_aug.shape), tuple(x_test.shape)


def write_image(path, size=(8, 6), color=(10, 20, 30)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_class_tree(root, classes: Sequence[str], per_class: int, size=(8, 6), ext: str = "jpg") -> None:
    """``root/<class>/<class>_<i>.<ext>`` tiny images, a distinct colour per class."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(os.path.join(root, name, f"{name}_{i}.{ext}"), size, (c % 256, i * 40 % 256, 100))


def write_cifar100(base_path, per_class_train: int = 1, per_class_test: int = 1, seed: int = 0) -> tuple:
    """``<base>/CIFAR100/cifar-100-python/{train,test}`` pickles in the official format; returns the labels."""
    rng = np.random.RandomState(seed)
    folder = os.path.join(base_path, "CIFAR100", "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    labels = {}
    for split, n in (("train", per_class_train), ("test", per_class_test)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        data = rng.randint(0, 256, size=(len(fine), 3072)).astype(np.uint8)
        with open(os.path.join(folder, split), "wb") as fh:
            pickle.dump({"data": data, "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}, fh)
        labels[split] = fine
    return labels["train"], labels["test"]


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder, per_class_train: int = 2, per_class_test: int = 1, gz: bool = True, seed: int = 0):
    """The four MNIST-format files (gzipped or raw) with 10 classes; returns (train labels, test labels)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    out = []
    for prefix, n in (("train", per_class_train), ("t10k", per_class_test)):
        y = rng.permutation(np.repeat(np.arange(10), n)).astype(np.uint8)
        x = rng.randint(0, 256, size=(len(y), 28, 28)).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = os.path.join(folder, f"{prefix}-{kind}-ubyte" + (".gz" if gz else ""))
            with (gzip.open if gz else open)(name, "wb") as fh:
                fh.write(idx_bytes(arr))
        out.append(y.astype(np.int64))
    return out[0], out[1]
