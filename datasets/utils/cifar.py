"""CIFAR-10/100 in the official "python version" layout: download with verification, read without pickle classes."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np

from datasets.utils.download import download_and_extract
from datasets.utils.sources import ImageSource
from utils.errors import UserError


@dataclass(frozen=True)
class CifarFiles:
    folder: str          # root folder under base_path (Mammoth layout)
    extracted: str       # the archive's top folder
    archive: str
    url: str
    md5: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    label_key: str


CIFAR = {
    "cifar10": CifarFiles("CIFAR10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                          "c58f30108f718f92721af3b95e74349a",
                          tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "labels"),
    "cifar100": CifarFiles("CIFAR100", "cifar-100-python", "cifar-100-python.tar.gz",
                           "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                           "eb9058c3a382ffc7106e4002c42a8d85", ("train",), ("test",), "fine_labels"),
}

# CIFAR-100 fine labels: the ids are the alphabetical order of these names (the official ``meta`` file).
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays: a CIFAR batch cannot run code."""

    ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
               for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError) as exc:
        raise UserError(f"corrupt CIFAR file {path} ({type(exc).__name__}: {exc}); delete it to re-download") from None
    if len(data) != len(labels):
        raise UserError(f"corrupt CIFAR file {path}: {len(data)} images but {len(labels)} labels; delete it")
    return np.ascontiguousarray(data), labels


def load_cifar(name: str, base_path: str, download: bool = True) -> tuple[ImageSource, ImageSource]:
    """Train and test splits of CIFAR-``name`` under ``<base_path>/<CIFAR10|CIFAR100>/``."""
    spec = CIFAR[name]
    root = os.path.join(base_path, spec.folder)
    folder = os.path.join(root, spec.extracted)
    wanted = [os.path.join(folder, f) for f in spec.train + spec.test]
    if not all(os.path.isfile(p) for p in wanted) and download:
        try:
            download_and_extract(spec.url, os.path.join(root, spec.archive), root, md5=spec.md5)
        except UserError as exc:  # offline, proxy, bad checksum, corrupt archive
            missing = [os.path.basename(p) for p in wanted if not os.path.isfile(p)]
            raise UserError(f"{name} files missing ({', '.join(missing)}) and the download failed "
                            f"({exc}); put {spec.archive} from {spec.url} extracted as "
                            f"{folder}/ (or pass --base_path)") from None
    parts = {}
    for split, files in (("train", spec.train), ("test", spec.test)):
        arrays = [_read_batch(os.path.join(folder, f), spec.label_key) for f in files]
        parts[split] = ImageSource(np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays]))
    return parts["train"], parts["test"]
