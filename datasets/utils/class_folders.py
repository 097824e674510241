"""``ClassFolderDataset``: a benchmark stored as one folder per class (RESISC45, CropDisease, ...)."""
from __future__ import annotations

import argparse
import os
from typing import Callable

from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.download import add_onedrive_arg, ensure_data, hf_snapshot, with_onedrive_fallback
from datasets.utils.folders import folders_with_split, has_class_folders, manifest_splits
from datasets.utils.sources import ImageSource
from datasets.utils.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_crop, rrc_flip


class ClassFolderDataset(ContinualDataset):
    """Images under ``<base_path>/<FOLDER>/``: ``train/<class>/`` + ``test/<class>/``, or one ``<class>/`` tree
    split 80/20 per class (seed 0); class ids in sorted folder-name order. Missing data is downloaded from the
    Hugging Face dataset ``HF_REPO``, else from the OneDrive archive of ``--onedrive_url`` (default: Mammoth's
    mirror), whose layout is two image lists (``MANIFESTS``: train, test; keys ``MANIFEST_KEYS``: paths, labels;
    paths relative to ``<FOLDER>/<MANIFEST_IMAGE_DIR>``).
    224x224 ViT pipelines: RandomResizedCrop + flip for training, Resize ``TEST_RESIZE`` + CenterCrop 224 for
    testing; ImageNet statistics."""

    FOLDER: str = ""
    HF_REPO: str = ""
    TEST_RESIZE: int | tuple[int, int] = 224
    MANIFESTS: tuple[str, str] = ("train.json", "test.json")
    MANIFEST_KEYS: tuple[str, str] = ("data", "labels")
    MANIFEST_IMAGE_DIR = ""
    SIZE = (224, 224)
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

    @classmethod
    def get_parser(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_onedrive_arg(parser, cls.NAME)
        return parser

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, self.FOLDER)
        archive = os.path.join(root, f"{self.HF_REPO.rsplit('/', 1)[-1]}.zip")

        def fetch() -> None:  # Hugging Face, else the OneDrive mirror (--onedrive_url)
            with_onedrive_fallback(lambda: hf_snapshot(self.HF_REPO, root), getattr(self.args, "onedrive_url", None),
                                   archive, root)

        def has_manifests() -> bool:
            return all(os.path.isfile(os.path.join(root, m)) for m in self.MANIFESTS)

        ensure_data(lambda: has_manifests() or has_class_folders(root), fetch, self.NAME,
                    f"the {self.n_classes} class folders (or train/ and test/ with them) in {root}/")
        if has_manifests():
            train, test, self.class_names = manifest_splits(root, self.MANIFESTS, self.MANIFEST_KEYS, self.n_classes,
                                                            self.NAME, image_dir=self.MANIFEST_IMAGE_DIR)
        else:
            train, test, self.class_names = folders_with_split(root, self.n_classes, self.NAME)
        return train, test

    def train_ops(self) -> list[Callable]:
        return rrc_flip(224)

    def test_ops(self) -> list[Callable]:
        return resize_crop(self.TEST_RESIZE, 224)
