"""Sequential RESISC45 (NWPU remote-sensing scenes): 9 tasks x 5 classes (Mammoth's ``seq-resisc45``)."""
from __future__ import annotations

from datasets.utils.class_folders import ClassFolderDataset


class SequentialRESISC45(ClassFolderDataset):
    """RESISC45 from ``<base_path>/NWPU-RESISC45/`` (the official ``<class>/<class>_NNN.jpg`` tree, or
    ``train/`` + ``test/``, or the image lists ``resisc45_{train,test}.yaml`` of Mammoth's mirror), downloaded
    from ``aimagelab-ta/resisc45``."""

    NAME = "seq-resisc45"
    SETTING = "class-il"
    N_TASKS = 9
    N_CLASSES_PER_TASK = 5
    DEFAULTS = {"backbone": "vit", "n_epochs": 30, "batch_size": 128}
    FOLDER = "NWPU-RESISC45"
    HF_REPO = "aimagelab-ta/resisc45"
    TEST_RESIZE = (256, 256)
    MANIFESTS = ("resisc45_train.yaml", "resisc45_test.yaml")  # the layout of Mammoth's OneDrive mirror
    MANIFEST_KEYS = ("data", "targets")
