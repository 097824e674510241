"""Image-folder datasets: class trees, deterministic per-class splits, path lists read lazily."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from datasets.utils.paths import check_regular
from datasets.utils.sources import ImageSource
from utils.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def is_folder(entry: os.DirEntry, follow: bool = True) -> bool:
    """``entry.is_dir()``; a symbolic-link loop is a one-line error (not an OSError)."""
    try:
        return entry.is_dir(follow_symlinks=follow)
    except OSError as exc:  # a symbolic-link loop
        raise UserError(f"{entry.path} cannot be read ({exc.strerror}); fix or remove it") from None


def image_files(folder: str, root: str) -> list[str]:
    """Image paths under ``folder`` relative to ``root``, in ``os.walk`` order (top-down, sorted; linked folders
    are not entered). An image name that is not a regular file (a pipe, a device, a link loop) is an error."""
    files: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            raise UserError(f"cannot list {current} ({exc.strerror}); fix its permissions or remove it") from None
        subfolders = []
        for entry in entries:
            if is_folder(entry, follow=False):
                subfolders.append(entry.path)
            elif is_image(entry.name):
                try:
                    regular = entry.is_file()
                except OSError:
                    regular = False
                if not regular:
                    check_regular(entry.path, "image", fix="remove it or replace it by an image file")
                files.append(os.path.relpath(entry.path, root))
        pending.extend(reversed(subfolders))
    return files


def class_tree(root: str) -> dict[str, list[str]]:
    """``{class folder: sorted image paths relative to root}`` for ``root/<class>/**/<image>``."""
    tree: dict[str, list[str]] = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not is_folder(entry):
            continue
        files = image_files(entry.path, root)
        if files:
            tree[entry.name] = files
    return tree


def check_class_count(tree: dict[str, list[str]], expected: int, where: str, dataset: str) -> None:
    """One-line error when ``where`` does not hold ``expected`` class folders."""
    if len(tree) != expected:
        raise UserError(f"{dataset}: found {len(tree)} class folders with images in {where}, expected {expected}; "
                        f"the data is incomplete: delete the folder to download it again")


def seeded_split(tree: dict[str, list[str]], test_fraction: float, seed: int = 0,
                 classes: Optional[Sequence[str]] = None) -> tuple[list[str], list[int], list[str], list[int]]:
    """Per-class random split: ``round(n * test_fraction)`` test images (at least 1 if n > 1) per class.

    Class ids follow ``classes`` (default: sorted folder names); each class draws from its own
    ``RandomState(seed + class_id)`` over its sorted file list, so the split is the same on every
    machine and does not change when other classes are added.
    """
    names = list(classes) if classes is not None else sorted(tree)
    train_p, train_y, test_p, test_y = [], [], [], []
    for label, name in enumerate(names):
        files = sorted(tree.get(name, []))
        n_test = int(round(len(files) * test_fraction))
        if len(files) > 1:
            n_test = min(max(1, n_test), len(files) - 1)
        order = np.random.RandomState(seed + label).permutation(len(files))
        test_idx = set(order[:n_test].tolist())
        for i, f in enumerate(files):
            (test_p if i in test_idx else train_p).append(f)
            (test_y if i in test_idx else train_y).append(label)
    return train_p, train_y, test_p, test_y


def source(root: str, relative_paths: Sequence[str], labels: Sequence[int]) -> ImageSource:
    """An :class:`ImageSource` of ``root/<relative path>`` files (read when a sample is requested)."""
    return ImageSource([os.path.join(root, p) for p in relative_paths], np.asarray(labels, dtype=np.int64))


def train_test_folders(root: str, dataset: str,
                       n_classes: Optional[int] = None) -> tuple[ImageSource, ImageSource, list[str]]:
    """``root/train/<class>/`` and ``root/test/<class>/`` (ids in sorted class-name order); with ``n_classes``,
    exactly that many training class folders. A test class must be a training class."""
    trees = {split: class_tree(os.path.join(root, split)) for split in ("train", "test")}
    if n_classes is not None:
        check_class_count(trees["train"], n_classes, os.path.join(root, "train"), dataset)
    classes = sorted(trees["train"])
    extra = sorted(set(trees["test"]) - set(classes))
    if extra:
        raise UserError(f"{dataset}: {root}/test/{extra[0]} is not a class of {root}/train (no training images); "
                        f"add training images for it or remove the folder")
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for split in ("train", "test"):
        paths = [os.path.join(split, p) for c in sorted(trees[split]) for p in trees[split][c]]
        labels = [index[c] for c in sorted(trees[split]) for _ in trees[split][c]]
        splits.append(source(root, paths, labels))
    return splits[0], splits[1], classes


def has_class_folder(folder: str, skip: tuple[str, ...] = ()) -> bool:
    """Whether ``folder`` holds a visible sub-folder (not named in ``skip``); the listing is closed again."""
    with os.scandir(folder) as entries:
        return any(e.is_dir() and not e.name.startswith(".") and e.name not in skip for e in entries)


def has_train_test_folders(root: str) -> bool:
    def non_empty(folder: str) -> bool:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    return all(os.path.isdir(os.path.join(root, s)) and non_empty(os.path.join(root, s)) for s in ("train", "test"))


def folders_with_split(root: str, n_classes: int, dataset: str,
                       test_fraction: float = 0.2) -> tuple[ImageSource, ImageSource, list[str]]:
    """``root/train|test/<class>/`` when present, else ``root/<class>/`` split by :func:`seeded_split` (seed 0)."""
    if has_train_test_folders(root):
        return train_test_folders(root, dataset, n_classes)
    tree = class_tree(root)
    check_class_count(tree, n_classes, root, dataset)
    train_p, train_y, test_p, test_y = seeded_split(tree, test_fraction, seed=0)
    return source(root, train_p, train_y), source(root, test_p, test_y), sorted(tree)


def has_class_folders(root: str) -> bool:
    """True when ``root`` holds ``train/`` + ``test/`` or at least one class folder with images."""
    return os.path.isdir(root) and (has_train_test_folders(root) or bool(class_tree(root)))


def read_manifest(path: str, paths_key: str, labels_key: str) -> tuple[list[str], list[int]]:
    """Image paths and labels listed in a JSON or YAML manifest (the layout of Mammoth's OneDrive mirrors)."""
    import json

    import yaml
    try:
        with open(path) as fh:
            table = json.load(fh) if path.endswith(".json") else yaml.safe_load(fh)
        paths, labels = [str(p) for p in table[paths_key]], [int(y) for y in table[labels_key]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read the image list {path} ({type(exc).__name__}: {exc}); delete the dataset "
                        f"folder to download it again") from None
    if len(paths) != len(labels):
        raise UserError(f"{path} lists {len(paths)} images but {len(labels)} labels; delete the dataset folder "
                        f"to download it again")
    return paths, labels


def manifest_splits(root: str, manifests: tuple[str, str], keys: tuple[str, str], n_classes: int, dataset: str,
                    image_dir: str = "") -> tuple[ImageSource, ImageSource, list[str]]:
    """Train and test :class:`ImageSource` from two manifests in ``root`` (paths relative to ``root/image_dir``).

    Class names are the images' parent folders when each label has one (``<class>/<image>``), else ``class_<i>``."""
    splits, folder_of = [], {}
    for name in manifests:
        paths, labels = read_manifest(os.path.join(root, name), *keys)
        bad = sorted({y for y in labels if not 0 <= y < n_classes})
        if bad:
            raise UserError(f"{dataset}: {name} has label {bad[0]}, outside 0..{n_classes - 1}; delete the dataset "
                            f"folder to download it again")
        for p, y in zip(paths, labels):
            folder_of.setdefault(y, set()).add(os.path.basename(os.path.dirname(p)))
        splits.append(source(os.path.join(root, image_dir), paths, labels))
    names = [next(iter(folder_of[i])) if len(folder_of.get(i, ())) == 1 and next(iter(folder_of[i])) else
             f"class_{i}" for i in range(n_classes)]
    return splits[0], splits[1], names
