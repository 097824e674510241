"""Sequential EuroSAT (RGB): 5 tasks x 2 land-cover classes (Mammoth's ``seq-eurosat-rgb``)."""
from __future__ import annotations

import json
import os
from typing import Callable

from datasets.utils.download import download_and_extract, ensure_data, hf_file
from datasets.utils.folders import has_class_folder, source
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.transforms import CLIP_MEAN, CLIP_STD, resize_crop, rrc_flip
from datasets.utils.sources import ImageSource
from utils.errors import UserError

HF_REPO = "aimagelab-ta/eurosat-rgb"
# torchvision's EuroSAT archive (md5 from torchvision.datasets.EuroSAT); it extracts to 2750/<Class>/<file>.jpg
IMAGES_URL = ("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
              "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip")
IMAGES_MD5 = "c8fa014336c82ac7804f0398fcb19387"
IMAGE_DIRS = ("2750", "images", "")


def read_split_json(path: str) -> dict[str, list[tuple[str, int, str]]]:
    """``{"train"|"val"|"test": [[relative_path, label, class_name], ...]}``."""
    try:
        with open(path) as fh:
            split = json.load(fh)
        parsed = {k: [(str(e[0]), int(e[1]), str(e[2])) for e in split[k]] for k in ("train", "test")}
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"cannot read {path} ({type(exc).__name__}: {exc}); it must map train/test to lists of "
                        f"[relative_path, label, class_name]: delete it to download it again") from None
    return parsed


class SequentialEuroSatRgb(ContinualDataset):
    """EuroSAT RGB with the fixed split of ``<base_path>/eurosat/split.json`` (train/val/test entries
    ``[relative_path, label, class_name]``); images under ``<base_path>/eurosat/2750/<Class>/``."""

    NAME = "seq-eurosat-rgb"
    SETTING = "class-il"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    SIZE = (224, 224)
    MEAN, STD = CLIP_MEAN, CLIP_STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 5, "batch_size": 128}

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "eurosat")
        split_path = os.path.join(root, "split.json")

        def image_dir() -> str:
            """The folder the split's paths are relative to: 2750/ (the archive's), images/, or the root."""
            for folder in (os.path.join(root, name) for name in IMAGE_DIRS):
                if os.path.isdir(folder) and has_class_folder(folder, IMAGE_DIRS):
                    return folder
            return ""

        def fetch() -> None:
            if not os.path.isfile(split_path):
                hf_file(HF_REPO, "split.json", root)
            if not image_dir():
                download_and_extract(IMAGES_URL, os.path.join(root, "EuroSAT.zip"), root, md5=IMAGES_MD5)

        ensure_data(lambda: os.path.isfile(split_path) and bool(image_dir()), fetch, self.NAME,
                    f"split.json and the images (2750/<Class>/*.jpg) in {root}/")
        split, images = read_split_json(split_path), image_dir()
        names: dict[int, str] = {}
        for entries in split.values():
            names.update({label: cls for _, label, cls in entries})
        if sorted(names) != list(range(self.n_classes)):
            raise UserError(f"{split_path}: labels {sorted(names)} are not 0..{self.n_classes - 1}")
        self.class_names = [names[i] for i in range(self.n_classes)]
        sources = []
        for key in ("train", "test"):
            paths = [p for p, _, _ in split[key]]
            missing = [p for p in paths if not os.path.isfile(os.path.join(images, p))]
            if missing:
                raise UserError(f"{len(missing)} {key} images of {split_path} are missing under {images}/ "
                                f"(first: {missing[0]}); delete {images} to extract the images again")
            sources.append(source(images, paths, [label for _, label, _ in split[key]]))
        return sources[0], sources[1]

    def train_ops(self) -> list[Callable]:
        return rrc_flip(224, scale=(0.08, 1.0))

    def test_ops(self) -> list[Callable]:
        return resize_crop(224, 224)
