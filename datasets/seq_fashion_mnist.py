"""Sequential Fashion-MNIST: 5 tasks x 2 classes, 28x28 grayscale (a project extension in seq-mnist's style)."""
from __future__ import annotations

from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.mnist import MnistLike


class SequentialFashionMNIST(MnistLike, ContinualDataset):
    """Fashion-MNIST in 5 class-incremental tasks; reads ``<base_path>/FashionMNIST/raw/``.

    Offline, the full dataset is read from the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/``) when it is installed.
    """

    NAME = "seq-fashion-mnist"
    SETTING = "class-il"
    SOURCE = "fashion-mnist"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
