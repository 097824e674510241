"""Sequential RESISC45 (NWPU remote-sensing scenes): 9 tasks x 5 classes (Mammoth's ``seq-resisc45``)."""
from __future__ import annotations

import argparse
import os
from typing import Callable

from datasets.utils.download import add_onedrive_arg, ensure_data, hf_snapshot, with_onedrive_fallback
from datasets.utils.folders import folders_with_split, has_class_folders, manifest_splits
from datasets.utils.image_dataset import IMAGENET_MEAN, IMAGENET_STD, OpListDataset, resize_crop, rrc_flip
from datasets.utils.sources import ImageSource

HF_REPO = "aimagelab-ta/resisc45"


class SequentialRESISC45(OpListDataset):
    """RESISC45 from ``<base_path>/NWPU-RESISC45/``: ``train/<class>/`` + ``test/<class>/``, or the official
    ``<class>/<class>_NNN.jpg`` tree split 80/20 per class (seed 0). Downloads ``aimagelab-ta/resisc45``."""

    NAME = "seq-resisc45"
    SETTING = "class-il"
    N_TASKS = 9
    N_CLASSES_PER_TASK = 5
    SIZE = (224, 224)
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 30, "batch_size": 128}

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_onedrive_arg(parser, "seq-resisc45")
        return parser

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "NWPU-RESISC45")

        def fetch() -> None:  # Hugging Face, else the OneDrive mirror (--onedrive_url)
            with_onedrive_fallback(lambda: hf_snapshot(HF_REPO, root), getattr(self.args, "onedrive_url", None),
                                   os.path.join(root, "resisc45.zip"), root)

        manifests = ("resisc45_train.yaml", "resisc45_test.yaml")  # the layout of Mammoth's OneDrive mirror
        has_manifests = lambda: all(os.path.isfile(os.path.join(root, m)) for m in manifests)
        ensure_data(lambda: has_manifests() or has_class_folders(root), fetch, self.NAME,
                    f"the 45 class folders (or train/ and test/ with them) in {root}/")
        if has_manifests():
            train, test, self.CLASS_NAMES = manifest_splits(root, manifests, ("data", "targets"), self.N_CLASSES,
                                                            self.NAME, image_dir="")
        else:
            train, test, self.CLASS_NAMES = folders_with_split(root, self.N_CLASSES, self.NAME)
        return train, test

    def train_ops(self) -> list[Callable]:
        return rrc_flip(224)

    def test_ops(self) -> list[Callable]:
        return resize_crop((256, 256), 224)
