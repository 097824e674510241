"""Sequential Stanford Cars: 10 tasks (9 x 20 + 16 classes) (Mammoth's ``seq-cars196``)."""
from __future__ import annotations

import os
from typing import Callable

from torchvision import transforms

from datasets.utils.arrays import read_class_names, read_pt_split
from datasets.utils.download import DownloadError, ensure_data, hf_file, record_sidecar
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.sources import ImageSource

HF_REPO = "aimagelab-ta/cars196"
FILES = ("train_images.pt", "train_labels.pt", "test_images.pt", "test_labels.pt")


class SequentialCars196(ContinualDataset):
    """Cars-196 from ``<base_path>/cars196/{train,test}_{images,labels}.pt`` (uint8 (N, 3, 224, 224) images,
    short side resized to 224 and centre-cropped), fetched file by file from ``aimagelab-ta/cars196``."""

    NAME = "seq-cars196"
    SETTING = "class-il"
    N_TASKS = 10
    N_CLASSES_PER_TASK = [20] * 9 + [16]
    SIZE = (224, 224)
    MEAN = None  # Mammoth feeds these images unnormalised (values in [0, 1])
    STD = None
    DEFAULTS = {"backbone": "vit", "n_epochs": 50, "batch_size": 128}

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "cars196")
        paths = [os.path.join(root, f) for f in FILES]

        def fetch() -> None:
            for name, path in zip(FILES, paths):
                if not os.path.isfile(path):
                    hf_file(HF_REPO, name, root)
                    record_sidecar(path)
            try:
                hf_file(HF_REPO, "class_names.json", root)
            except DownloadError:
                pass  # the names are optional

        ensure_data(lambda: all(os.path.isfile(p) for p in paths), fetch, self.NAME,
                    f"{', '.join(FILES)} in {root}/ (from huggingface.co/datasets/{HF_REPO})")
        names = read_class_names(root)
        if names is not None:
            self.class_names = names
        return read_pt_split(paths[0], paths[1]), read_pt_split(paths[2], paths[3])

    def train_ops(self) -> list[Callable]:
        return [transforms.RandomHorizontalFlip()]
