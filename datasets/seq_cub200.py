"""Sequential CUB-200-2011: 10 tasks x 20 bird species (Mammoth's ``seq-cub200``)."""
from __future__ import annotations

import argparse
import os
from typing import Callable

from torchvision import transforms

from datasets.utils.arrays import read_npz_split
from datasets.utils.download import add_onedrive_arg, ensure_data, hf_snapshot, record_sidecar, with_onedrive_fallback
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.transforms import BICUBIC, IMAGENET_MEAN, IMAGENET_STD, resize_crop
from datasets.utils.sources import ImageSource

HF_REPO = "aimagelab-ta/cub200"
FILES = ("train_data.npz", "test_data.npz")


class SequentialCUB200(ContinualDataset):
    """CUB-200 from ``<base_path>/CUB200/{train,test}_data.npz`` (arrays ``data`` uint8 NHWC, ``targets``,
    optionally ``classes``), downloaded from the Hugging Face dataset ``aimagelab-ta/cub200``, else from the
    OneDrive zip given by ``--onedrive_url`` (Mammoth's mirror)."""

    NAME = "seq-cub200"
    SETTING = "class-il"
    N_TASKS = 10
    N_CLASSES_PER_TASK = 20
    SIZE = (224, 224)
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 50, "batch_size": 128}

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_onedrive_arg(parser, "seq-cub200")
        return parser

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "CUB200")
        paths = [os.path.join(root, f) for f in FILES]

        def fetch() -> None:
            with_onedrive_fallback(lambda: hf_snapshot(HF_REPO, root, allow_patterns=list(FILES) + ["*.json"]),
                                   getattr(self.args, "onedrive_url", None), os.path.join(root, "cub200.zip"), root)
            for p in paths:
                if os.path.isfile(p):
                    record_sidecar(p)

        ensure_data(lambda: all(os.path.isfile(p) for p in paths), fetch, self.NAME,
                    f"{' and '.join(FILES)} in {root}/ (from huggingface.co/datasets/{HF_REPO})")
        (train, names), (test, _) = read_npz_split(paths[0]), read_npz_split(paths[1])
        if names is not None:
            self.class_names = names
        return train, test

    def train_ops(self) -> list[Callable]:
        return [transforms.Resize((300, 300), interpolation=BICUBIC), transforms.RandomCrop(224),
                transforms.RandomHorizontalFlip()]

    def test_ops(self) -> list[Callable]:
        return resize_crop(256, 224)
