"""Sequential CropDisease (plant leaves): 7 tasks x 5 classes (Mammoth's ``seq-cropdisease``)."""
from __future__ import annotations

import argparse
import os
from typing import Callable

from datasets.utils.download import add_onedrive_arg, ensure_data, hf_snapshot, with_onedrive_fallback
from datasets.utils.folders import folders_with_split, has_class_folders, manifest_splits
from datasets.utils.image_dataset import IMAGENET_MEAN, IMAGENET_STD, OpListDataset, resize_crop, rrc_flip
from datasets.utils.sources import ImageSource

HF_REPO = "aimagelab-ta/cropdisease"


class SequentialCropDisease(OpListDataset):
    """CropDisease from ``<base_path>/cropdisease/``: ``train/<class>/`` + ``test/<class>/`` (35 classes), or one
    ``<class>/`` tree split 80/20 per class (seed 0). Downloads ``aimagelab-ta/cropdisease``.
    ``--dataset_config second_order_ta`` gives the ITA/IEL setting."""

    NAME = "seq-cropdisease"
    SETTING = "class-il"
    N_TASKS = 7
    N_CLASSES_PER_TASK = 5
    SIZE = (224, 224)
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 5, "batch_size": 128}

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_onedrive_arg(parser, "seq-cropdisease")
        return parser

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "cropdisease")

        def fetch() -> None:  # Hugging Face, else the OneDrive mirror (--onedrive_url)
            with_onedrive_fallback(lambda: hf_snapshot(HF_REPO, root), getattr(self.args, "onedrive_url", None),
                                   os.path.join(root, "cropdisease.zip"), root)

        manifests = ("train.json", "test.json")  # the layout of Mammoth's OneDrive mirror
        has_manifests = lambda: all(os.path.isfile(os.path.join(root, m)) for m in manifests)
        ensure_data(lambda: has_manifests() or has_class_folders(root), fetch, self.NAME,
                    f"train/<class>/ and test/<class>/ image folders (35 classes) in {root}/")
        if has_manifests():
            train, test, self.CLASS_NAMES = manifest_splits(root, manifests, ("data", "labels"), self.N_CLASSES,
                                                            self.NAME, image_dir="images")
        else:
            train, test, self.CLASS_NAMES = folders_with_split(root, self.N_CLASSES, self.NAME)
        return train, test

    def train_ops(self) -> list[Callable]:
        return rrc_flip(224)

    def test_ops(self) -> list[Callable]:
        return resize_crop(224, 224)
