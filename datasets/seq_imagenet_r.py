"""Sequential ImageNet-R: 10 tasks x 20 of 200 classes (Mammoth's ``seq-imagenet-r``).

The split is deterministic and documented, but it is NOT Mammoth's: by default 20% of each class's
images (seed 0 per class, over the sorted file list) form the test set, and class ids follow the
sorted wnids. ``--imagenet_r_split FOLDER`` reads Mammoth's own ``imagenet-r_train.yaml`` and
``imagenet-r_test.yaml`` (keys ``data``: paths, ``targets``: labels) instead; their hard-coded
``data/imagenet-r/`` prefixes are stripped so the paths resolve under ``--base_path``.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable

import yaml

from datasets.utils.download import download_and_extract, ensure_data
from datasets.utils.folders import check_class_count, class_tree, seeded_split, source
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.transforms import resize_crop, rrc_flip
from datasets.utils.sources import ImageSource
from utils.args import none_or
from utils.errors import UserError

URL = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar"
SPLIT_FILES = ("imagenet-r_train.yaml", "imagenet-r_test.yaml")


def relative_to_root(path: str) -> str:
    """``data/imagenet-r/n0144/x.jpg`` -> ``n0144/x.jpg``: Mammoth's hard-coded prefix dropped (flat layout)."""
    return "/".join(path.replace("\\", "/").split("/")[-2:])


def read_mammoth_split(path: str) -> tuple[list[str], list[int]]:
    """Paths (relative to the dataset root) and labels of one Mammoth split YAML."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=loader)  # noqa: S506 - a safe loader
        paths, targets = [relative_to_root(str(p)) for p in data["data"]], [int(t) for t in data["targets"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot read the ImageNet-R split {path} ({type(exc).__name__}); it must hold the lists "
                        f"'data' (image paths) and 'targets' (labels)") from None
    if len(paths) != len(targets):
        raise UserError(f"{path}: {len(paths)} paths but {len(targets)} targets")
    return paths, targets


class SequentialImageNetR(ContinualDataset):
    """ImageNet-R under ``<base_path>/imagenet-r/<wnid>/*.jpg`` (the official archive's layout)."""

    NAME = "seq-imagenet-r"
    SETTING = "class-il"
    N_TASKS = 10
    N_CLASSES_PER_TASK = 20
    SIZE = (224, 224)
    MEAN, STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    DEFAULTS = {"backbone": "vit", "n_epochs": 50, "batch_size": 128}
    TEST_FRACTION = 0.2

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = parser.add_argument_group("seq-imagenet-r")
        group.add_argument("--imagenet_r_split", type=none_or(str), default=None,
                           help="folder with Mammoth's imagenet-r_train.yaml and imagenet-r_test.yaml "
                                "(default: this project's seeded 80/20 per-class split, see docs/datasets.md)")
        return parser

    def load(self) -> tuple[ImageSource, ImageSource]:
        root = os.path.join(self.args.base_path, "imagenet-r")
        ensure_data(lambda: os.path.isdir(root) and bool(class_tree(root)),
                    lambda: download_and_extract(URL, os.path.join(self.args.base_path, "imagenet-r.tar"),
                                                 self.args.base_path),
                    self.NAME, f"the 200 <wnid>/ folders of imagenet-r.tar in {root}/")
        split_dir = getattr(self.args, "imagenet_r_split", None)
        if split_dir:
            return self._mammoth_split(root, split_dir)
        tree = class_tree(root)
        check_class_count(tree, self.n_classes, root, self.NAME)
        self.class_names = sorted(tree)
        train_p, train_y, test_p, test_y = seeded_split(tree, self.TEST_FRACTION, seed=0)
        return source(root, train_p, train_y), source(root, test_p, test_y)

    def _mammoth_split(self, root: str, split_dir: str) -> tuple[ImageSource, ImageSource]:
        files = [os.path.join(split_dir, f) for f in SPLIT_FILES]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise UserError(f"--imagenet_r_split {split_dir}: {os.path.basename(missing[0])} not found there; "
                            f"the folder must hold {' and '.join(SPLIT_FILES)}")
        sources = []
        for path in files:
            paths, targets = read_mammoth_split(path)
            absent = [p for p in paths if not os.path.isfile(os.path.join(root, p))]
            if absent:
                raise UserError(f"{len(absent)} images of {path} are missing under {root}/ (first: {absent[0]})")
            sources.append(source(root, paths, targets))
        return sources[0], sources[1]

    def train_ops(self) -> list[Callable]:
        return rrc_flip(224)

    def test_ops(self) -> list[Callable]:
        return resize_crop((256, 256), 224)
