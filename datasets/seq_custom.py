"""``seq-custom``: continual learning on your own images, from an ``.npz`` file or an ImageFolder root."""
from __future__ import annotations

import argparse
import os
import sys
import zipfile
from typing import Callable

import numpy as np
from torchvision import transforms

from datasets.utils.arrays import check_npz_fits, npz_headers
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.folders import IMAGE_EXTENSIONS, is_folder, train_test_folders
from datasets.utils.paths import check_regular
from datasets.utils.sources import ImageSource
from utils.args import none_or, parse_bool, positive_int
from utils.errors import UserError

NORMALIZATIONS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                  "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), "none": None, "dataset": None}


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 10,10,5, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive class counts like 10,10,5, got '{text}'")
    return values


def _image_shape(x: np.ndarray) -> tuple[int, int, int]:
    """(H, W, C) of NHWC or NHW images."""
    return (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]) if x.ndim == 4 else 1)


def read_npz(path: str) -> tuple[ImageSource, ImageSource, list[str] | None]:
    """Read ``x_train, y_train, x_test, y_test`` (uint8 NCHW, NHWC or NHW) and optional ``class_names``.

    Shapes, dtypes and the memory they need are checked from the array headers before anything is loaded;
    train and test images must have the same size and channels.
    """
    keys = ("x_train", "y_train", "x_test", "y_test")
    headers = npz_headers(path, "the file is corrupt or not an .npz: write it again with numpy.savez")
    missing = [k for k in keys if k not in headers]
    if missing:
        raise UserError(f"{path} lacks the keys {', '.join(missing)}; a seq-custom npz needs x_train, "
                        f"y_train, x_test, y_test (found: {', '.join(headers) or 'no arrays'})")
    for split in ("train", "test"):
        shape, dtype = headers[f"x_{split}"]
        if dtype != np.uint8:
            raise UserError(f"{path}: x_{split} must be uint8 images (0-255), got {dtype}")
        if len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
            shape = (shape[0], shape[2], shape[3], shape[1])
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)) or min(shape[1:3]) < 1:
            raise UserError(f"{path}: x_{split} has shape {shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)"
                            " with 1 or 3 channels and H, W >= 1")
        y_shape, y_dtype = headers[f"y_{split}"]
        if len(y_shape) != 1 or not np.issubdtype(y_dtype, np.integer):
            raise UserError(f"{path}: y_{split} must be a 1-D integer array, got {y_dtype} {y_shape}")
        if shape[0] != y_shape[0]:
            raise UserError(f"{path}: x_{split} has {shape[0]} images but y_{split} has {y_shape[0]} labels")
    check_npz_fits(path, headers, keys)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in keys}
            names = [str(n) for n in npz["class_names"]] if "class_names" in npz.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read {path} as an npz file ({type(exc).__name__}: {exc}); "
                        f"write it again with numpy.savez") from None
    splits = []
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
            x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        splits.append(ImageSource(np.ascontiguousarray(x), y.astype(np.int64)))
    (h, w, c), (th, tw, tc) = _image_shape(splits[0].data), _image_shape(splits[1].data)
    if (h, w, c) != (th, tw, tc):
        raise UserError(f"{path}: x_train images are {h}x{w} with {c} channel(s) but x_test images are {th}x{tw} "
                        f"with {tc}; train and test images must have the same size and channels (resize or convert "
                        f"one split)")
    return splits[0], splits[1], names


def dense_labels(train: ImageSource, test: ImageSource, names: list[str] | None,
                 where: str) -> tuple[ImageSource, ImageSource, list[str] | None]:
    """Labels must be >= 0; labels that are not 0..K-1 are remapped in sorted order (with a note on stderr)."""
    low = min(train.targets.min(initial=0), test.targets.min(initial=0))
    if low < 0:
        raise UserError(f"{where}: labels must be integers in [0, n_classes), found {low}; relabel the data")
    present = np.union1d(train.targets, test.targets)
    if names is not None and len(names) not in (len(present), int(present[-1]) + 1):
        raise UserError(f"{where}: class_names has {len(names)} names but the labels hold {len(present)} classes "
                        f"(largest label {present[-1]}); store one name per class")
    if len(present) == int(present[-1]) + 1:
        return train, test, names
    shown = ", ".join(str(v) for v in present[:8]) + (", ..." if len(present) > 8 else "")
    print(f"note: {where}: the labels ({shown}) are not 0..{len(present) - 1}; they are remapped to "
          f"0..{len(present) - 1} in sorted order", file=sys.stderr)
    if names is not None and len(names) != len(present):
        names = [names[int(v)] for v in present]
    return (ImageSource(train.data, np.searchsorted(present, train.targets)),
            ImageSource(test.data, np.searchsorted(present, test.targets)), names)


def channel_stats(data: np.ndarray, channels: int, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (floored at 1e-3) of uint8 images, in chunks (no float copy of the data)."""
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(data), chunk):
        pixels = data[start:start + chunk].reshape(-1, channels).astype(np.float64) / 255.0
        total += pixels.sum(axis=0)
        total_sq += (pixels ** 2).sum(axis=0)
        count += len(pixels)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
    return tuple(float(v) for v in mean), tuple(float(max(v, 1e-3)) for v in std)


def read_image_folder(root: str) -> tuple[ImageSource, ImageSource, list[str]]:
    """``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``; classes sorted by name."""
    for split in ("train", "test"):
        if not os.path.isdir(os.path.join(root, split)):
            raise UserError(f"{root} must contain train/ and test/ folders with one sub-folder per class")
    folders = sorted(e.name for e in os.scandir(os.path.join(root, "train")) if is_folder(e))
    train, test, classes = train_test_folders(root, "seq-custom")
    if not classes:
        raise UserError(f"{root}/train has no class folders with images ({', '.join(IMAGE_EXTENSIONS)}); "
                        f"put each class's images in {root}/train/<class>/")
    if len(classes) < len(folders):
        empty = sorted(set(folders) - set(classes))
        print(f"note: {root}/train: class folders without images are ignored: {', '.join(empty[:5])}"
              f"{', ...' if len(empty) > 5 else ''}", file=sys.stderr)
    return train, test, classes


class SequentialCustom(ContinualDataset):
    """Your data split into tasks: ``--data_path`` (npz or ImageFolder), ``--n_tasks`` or ``--classes_per_task``."""

    NAME = "seq-custom"
    SETTING = "class-il"
    DEFAULTS = {"backbone": "vit_tiny", "n_epochs": 5, "batch_size": 32}

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = parser.add_argument_group("seq-custom")
        group.add_argument("--data_path", type=none_or(str), default=None,
                           help="an .npz file (x_train, y_train, x_test, y_test) or a folder with train/ and test/")
        group.add_argument("--n_tasks", type=none_or(positive_int), default=None,
                           help="number of tasks with an equal share of classes (default: 5)")
        group.add_argument("--classes_per_task", type=none_or(parse_int_list), default=None,
                           help="explicit class counts per task, e.g. 10,10,5 (overrides --n_tasks)")
        group.add_argument("--img_size", type=none_or(positive_int), default=None,
                           help="resize images to this size (default: native size for npz, 224 for folders)")
        group.add_argument("--augment", type=parse_bool, default=True,
                           help="random crop and horizontal flip on training images (0: none, e.g. pre-augmented data)")
        group.add_argument("--normalization", type=str, default="dataset", choices=list(NORMALIZATIONS),
                           help="per-channel mean/std: of the training images, ImageNet's, 0.5/0.5 (half) or none")
        return parser

    def _configure(self) -> None:
        path = self.args.data_path
        if not path:
            raise UserError("seq-custom needs --data_path: an .npz file or a folder with train/ and test/")
        check_regular(path, "--data_path", folder_ok=True)
        if os.path.isdir(path):
            train, test, names = read_image_folder(path)
            native = 224
        else:
            train, test, names = read_npz(path)
            height, width = train.data.shape[1:3]
            native = int(height) if height == width else -1  # -1: not square, always resized
        if len(train) == 0:
            raise UserError(f"{path}: the train split holds no images; add training images")
        train, test, names = dense_labels(train, test, names, path)
        self._raw = (train, test)
        n_classes = int(max(train.targets.max(initial=-1), test.targets.max(initial=-1))) + 1
        if self.args.classes_per_task:
            per_task = list(self.args.classes_per_task)
            if sum(per_task) != n_classes:
                raise UserError(f"--classes_per_task sums to {sum(per_task)} but {path} has {n_classes} classes")
        else:
            n_tasks = self.args.n_tasks or 5
            if n_tasks > n_classes:
                raise UserError(f"--n_tasks {n_tasks} exceeds the {n_classes} classes of {path}")
            base, extra = divmod(n_classes, n_tasks)
            per_task = [base + (1 if t < extra else 0) for t in range(n_tasks)]
        # an int when all tasks are equal, as Mammoth's datasets declare it; a list otherwise
        self.n_tasks = len(per_task)
        self.n_classes_per_task = per_task[0] if len(set(per_task)) == 1 else per_task
        size = self.args.img_size or (native if native > 0 else int(train.data.shape[1]))
        self.size = (size, size)
        self._native = native
        self.in_chans = 1 if (isinstance(train.data, np.ndarray) and (train.data.ndim == 3 or train.data.shape[3] == 1)) else 3
        self.class_names = names
        if self.args.normalization == "dataset" and isinstance(train.data, np.ndarray):
            self.mean, self.std = channel_stats(train.data, self.in_chans)
        elif NORMALIZATIONS.get(self.args.normalization):
            mean, std = NORMALIZATIONS[self.args.normalization]
            self.mean, self.std = mean[:self.in_chans], std[:self.in_chans]

    def load(self) -> tuple[ImageSource, ImageSource]:
        return self._raw

    def _resize(self) -> list[Callable]:
        size = self.img_size
        if isinstance(self._raw[0].data, list):
            return [transforms.Resize(size), transforms.CenterCrop(size)]
        return [] if size == self._native else [transforms.Resize((size, size))]

    def train_ops(self) -> list[Callable]:
        size = self.img_size
        augment = [transforms.RandomCrop(size, padding=size // 8), transforms.RandomHorizontalFlip()] \
            if self.args.augment else []
        return self._resize() + augment

    def test_ops(self) -> list[Callable]:
        return self._resize()
