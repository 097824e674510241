"""Training-label changes of Mammoth's flags: label noise (``--noise_rate``/``--noise_type``) and
semi-supervised masks (``--label_perc_by_task``/``--label_perc_by_class``), all seeded by ``--seed``.

* Symmetric noise: each label is, with probability ``rate``, replaced by one of the *other*
  classes drawn uniformly (transition matrix ``(1 - rate) I + rate / (C - 1) (1 - I)``).
* Asymmetric noise (CIFAR-10 only, on the original class ids): with probability ``rate``
  truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.
* Masks: a seeded choice of ``round(perc * n)`` samples per task (or per class) keep their
  label; the others get -1.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from datasets.utils.paths import check_regular
from utils.errors import UserError
from utils.io import atomic_write

CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
ASYMMETRIC_MAPS = {"seq-cifar10": CIFAR10_ASYMMETRIC, "seq-cifar10-224": CIFAR10_ASYMMETRIC}


def noisy_labels(targets: np.ndarray, n_classes: int, rate: float, kind: str, seed: Optional[int],
                 dataset: str) -> np.ndarray:
    """``targets`` with label noise (a new array; the input is unchanged)."""
    rng = np.random.RandomState(0 if seed is None else seed)
    targets = np.asarray(targets, dtype=np.int64)
    flip = rng.rand(len(targets)) < rate
    noisy = targets.copy()
    if kind == "symmetric":
        if n_classes < 2:
            raise UserError("--noise_rate needs at least two classes")
        shift = rng.randint(1, n_classes, size=len(targets))  # any class but the true one
        noisy[flip] = (targets[flip] + shift[flip]) % n_classes
        return noisy
    mapping = ASYMMETRIC_MAPS.get(dataset)
    if mapping is None:
        raise UserError(f"--noise_type asymmetric is defined for {', '.join(sorted(ASYMMETRIC_MAPS))} only "
                        f"(not {dataset}); use --noise_type symmetric")
    for src, dst in mapping.items():
        noisy[flip & (targets == src)] = dst
    return noisy


def noisy_cache_file(args, dataset: str, n: int) -> str:
    """Where the noisy labels of ``n`` training images of ``dataset`` are cached."""
    return os.path.join(args.base_path, args.cache_path_noisy_labels,
                        f"{dataset}_{args.noise_type}_{args.noise_rate}_s{args.seed}_n{n}.npy")


def cached_noisy_labels(targets: np.ndarray, n_classes: int, args, dataset: str) -> np.ndarray:
    """:func:`noisy_labels`, cached under ``<base_path>/<cache_path_noisy_labels>/`` unless disabled.

    A cache folder that is not a folder, or a cache file that is not an ``.npy`` of ``len(targets)`` integer
    labels in ``[0, n_classes)`` (checked from its header before it is read), is a one-line error."""
    if args.disable_noisy_labels_cache:
        return noisy_labels(targets, n_classes, args.noise_rate, args.noise_type, args.seed, dataset)
    folder = os.path.join(args.base_path, args.cache_path_noisy_labels)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"the noisy-label cache folder {folder} is a file; remove it, or pass another "
                        f"--cache_path_noisy_labels (or --disable_noisy_labels_cache 1)")
    path = noisy_cache_file(args, dataset, len(targets))
    if os.path.lexists(path):
        return read_cached_labels(path, len(targets), n_classes)
    noisy = noisy_labels(targets, n_classes, args.noise_rate, args.noise_type, args.seed, dataset)
    os.makedirs(folder, exist_ok=True)
    atomic_write(path, lambda fh: np.save(fh, noisy), binary=True)
    return noisy


def read_cached_labels(path: str, n: int, n_classes: int) -> np.ndarray:
    """The ``n`` labels of a noisy-label cache file; anything else is a one-line :class:`UserError`."""
    fix = "delete it (it is computed again) or pass --disable_noisy_labels_cache 1"
    check_regular(path, "the noisy-label cache")
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                               np.lib.format.read_array_header_2_0)(fh)
            if shape != (n,) or dtype.hasobject or not np.issubdtype(dtype, np.integer):
                raise UserError(f"the noisy-label cache {path} holds an array of {dtype} and shape {shape}, "
                                f"not {n} integer labels; {fix}")
        labels = np.load(path, allow_pickle=False)
    except UserError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"the noisy-label cache {path} is not a label file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100] if str(exc) else ''}); {fix}") from None
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"the noisy-label cache {path} holds labels outside [0, {n_classes}); {fix}")
    return labels.astype(np.int64)


def labelled_mask(groups: np.ndarray, fraction: float, seed: Optional[int]) -> np.ndarray:
    """True for the ``round(fraction * n)`` samples (seeded, at least one) that keep their label in each group."""
    rng = np.random.RandomState(0 if seed is None else seed)
    keep = np.zeros(len(groups), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        n = max(1, int(round(fraction * len(idx))))
        keep[rng.permutation(idx)[:n]] = True
    return keep
