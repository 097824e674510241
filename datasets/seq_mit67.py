"""Sequential MIT Indoor-67: 10 tasks (7 x 7 + 3 x 6 classes) (Mammoth's ``seq-mit67``)."""
from __future__ import annotations

import os
from typing import Callable

from torchvision import transforms

from datasets.utils.download import download_and_extract, download_file, ensure_data
from datasets.utils.folders import class_tree, check_class_count, source
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.transforms import BICUBIC, IMAGENET_MEAN, IMAGENET_STD, resize_crop
from datasets.utils.sources import ImageSource
from utils.errors import UserError

IMAGES_URL = "http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar"
SPLIT_URLS = {"TrainImages.txt": "http://web.mit.edu/torralba/www/TrainImages.txt",
              "TestImages.txt": "http://web.mit.edu/torralba/www/TestImages.txt"}


def read_split_list(path: str, images: str, index: dict[str, int]) -> tuple[list[str], list[int]]:
    """Lines ``<class>/<file>`` of an official split file -> (paths relative to ``images``, labels)."""
    try:
        with open(path) as fh:
            lines = [ln.strip().replace("\\", "/") for ln in fh if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete it to download it again") from None
    paths, labels = [], []
    for line in lines:
        cls = line.split("/", 1)[0]
        if cls not in index:
            raise UserError(f"{path}: '{line}' names no class folder of {images}; the split file does not match")
        paths.append(line)
        labels.append(index[cls])
    missing = [p for p in paths if not os.path.isfile(os.path.join(images, p))]
    if missing:
        raise UserError(f"{len(missing)} images listed in {path} are missing under {images}/ (first: {missing[0]}); "
                        f"the extraction is incomplete: delete {images} to extract again")
    return paths, labels


class SequentialMIT67(ContinualDataset):
    """MIT-67 with the official split: ``<base_path>/MIT67/Images/<class>/*.jpg`` and
    ``<base_path>/MIT67/{Train,Test}Images.txt`` (80 + 20 images per class)."""

    NAME = "seq-mit67"
    SETTING = "class-il"
    N_TASKS = 10
    N_CLASSES_PER_TASK = [7] * 7 + [6] * 3
    SIZE = (224, 224)
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD
    DEFAULTS = {"backbone": "vit", "n_epochs": 50, "batch_size": 32}

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "MIT67")
        images = os.path.join(root, "Images")
        lists = {name: os.path.join(root, name) for name in SPLIT_URLS}

        def present() -> bool:
            return os.path.isdir(images) and all(os.path.isfile(p) for p in lists.values())

        def fetch() -> None:
            for name, url in SPLIT_URLS.items():
                download_file(url, lists[name])
            if not os.path.isdir(images):
                download_and_extract(IMAGES_URL, os.path.join(root, "indoorCVPR_09.tar"), root)

        ensure_data(present, fetch, self.NAME, f"Images/<class>/*.jpg, TrainImages.txt and TestImages.txt in {root}/")
        tree = class_tree(images)
        check_class_count(tree, self.n_classes, images, self.NAME)
        classes = sorted(tree)
        index = {c: i for i, c in enumerate(classes)}
        self.class_names = classes
        train = read_split_list(lists["TrainImages.txt"], images, index)
        test = read_split_list(lists["TestImages.txt"], images, index)
        return source(images, *train), source(images, *test)

    def train_ops(self) -> list[Callable]:
        return [transforms.Resize(256, interpolation=BICUBIC), transforms.RandomCrop(224),
                transforms.RandomHorizontalFlip()]

    def test_ops(self) -> list[Callable]:
        return resize_crop(256, 224)
