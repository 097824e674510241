"""Sequential Fashion-MNIST: 5 tasks x 2 classes, 28x28 grayscale (a project extension in seq-mnist's style)."""
from __future__ import annotations

from datasets.utils.image_dataset import OpListDataset
from datasets.utils.mnist import load_mnist_like
from datasets.utils.sources import ImageSource


class SequentialFashionMNIST(OpListDataset):
    """Fashion-MNIST in 5 class-incremental tasks; reads ``<base_path>/FashionMNIST/raw/``.

    Offline, the full dataset is read from the Debian package ``dataset-fashion-mnist``
    (``/usr/share/datasets/fashion-mnist/``) when it is installed.
    """

    NAME = "seq-fashion-mnist"
    SETTING = "class-il"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    SIZE = (28, 28)
    IN_CHANS = 1
    DEFAULTS = {"backbone": "mnistmlp", "n_epochs": 1, "batch_size": 64}
    CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]

    def load(self) -> tuple[ImageSource, ImageSource]:
        data = load_mnist_like("fashion-mnist", self.args.base_path)
        self.data_source = data.source
        return data.train, data.test
