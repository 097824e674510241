"""In-memory image sources and the torch datasets that serve one task's samples."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from utils.errors import UserError
from utils.seeding import seeded


@dataclass
class ImageSource:
    """Images and integer labels of one split.

    ``data`` is either a uint8 array (N, H, W, C) or (N, H, W), or a list of image file paths.
    """

    data: Union[np.ndarray, list[str]]
    targets: np.ndarray

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if len(self.data) != len(self.targets):
            raise UserError(f"{len(self.data)} images but {len(self.targets)} labels: the two must match")

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, indices: np.ndarray) -> "ImageSource":
        data = self.data[indices] if isinstance(self.data, np.ndarray) else [self.data[i] for i in indices]
        return ImageSource(data, self.targets[indices])

    def image(self, index: int) -> Image.Image:
        """The PIL image at ``index`` (RGB, or L for single-channel arrays)."""
        if isinstance(self.data, np.ndarray):
            arr = self.data[index]
            if arr.ndim == 3 and arr.shape[2] == 1:
                arr = arr[:, :, 0]
            return Image.fromarray(arr)
        path = self.data[index]
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"cannot read image {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                            f"; remove or replace the file") from None


def with_fields(item: tuple, owner: object, position: int) -> tuple:
    """``item`` followed by ``owner``'s per-sample ``extra_return_fields`` at ``position`` (Mammoth models attach
    e.g. ``logits`` to ``train_loader.dataset`` and receive them as ``observe`` keywords)."""
    names = getattr(owner, "extra_return_fields", ())
    return item + tuple(getattr(owner, name)[position] for name in names) if names else item


class TaskDataset(Dataset):
    """Samples of ``source`` at ``indices``: train items are (augmented, label, not_augmented), test (image, label)."""

    extra_return_fields: tuple[str, ...] = ()  # per-sample attributes a model attached, appended to train items

    def __init__(self, source: ImageSource, indices: Sequence[int], transform: Callable,
                 not_aug_transform: Optional[Callable] = None, extra_targets: Optional[np.ndarray] = None):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.transform, self.not_aug_transform = transform, not_aug_transform
        self.extra_targets = extra_targets  # e.g. the true labels under label noise, appended to train items
        self._owned = False

    @property
    def targets(self) -> np.ndarray:
        return self.source.targets[self.indices]

    @targets.setter
    def targets(self, value: np.ndarray) -> None:
        """Replace the labels (Mammoth models assign ``train_loader.dataset.targets``); ``len`` follows them."""
        self._own()
        self.source.targets = np.asarray(value, dtype=np.int64)
        self.indices = np.arange(len(self.source.targets))

    @property
    def data(self) -> Union[np.ndarray, list[str]]:
        """The task's images (Mammoth's ``train_loader.dataset.data``); assigning it replaces them."""
        if isinstance(self.source.data, np.ndarray):
            return self.source.data[self.indices]
        return [self.source.data[i] for i in self.indices]

    @data.setter
    def data(self, value: Union[np.ndarray, list[str]]) -> None:
        self._own()
        self.source.data = value

    def _own(self) -> None:
        """Copy this task's samples out of the shared split once, so that assigning them changes only this task."""
        if self._owned:
            return
        if self.extra_targets is not None:
            self.extra_targets = self.extra_targets[self.indices]
        self.source = ImageSource(self.data, self.targets)
        self.indices = np.arange(len(self.source))
        self._owned = True

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        """Item ``i``; ``i = (position, seed)`` draws the augmentation from ``seed`` alone (the global RNGs
        are seeded for it and restored), so it does not depend on the rank, worker or earlier items."""
        seed = None
        if isinstance(i, (tuple, list)):
            i, seed = i
        index = int(self.indices[i])
        img = self.source.image(index)
        label = int(self.source.targets[index])
        if seed is None:
            image = self.transform(img)
        else:
            with seeded(int(seed)):
                image = self.transform(img)
        if self.not_aug_transform is None:
            return image, label
        if self.extra_targets is not None:
            return with_fields((image, label, self.not_aug_transform(img), int(self.extra_targets[index])), self, i)
        return with_fields((image, label, self.not_aug_transform(img)), self, i)


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a data-loader worker from its torch seed."""
    import random
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
