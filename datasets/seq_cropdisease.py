"""Sequential CropDisease (plant leaves): 7 tasks x 5 classes (Mammoth's ``seq-cropdisease``)."""
from __future__ import annotations

from datasets.utils.class_folders import ClassFolderDataset


class SequentialCropDisease(ClassFolderDataset):
    """CropDisease from ``<base_path>/cropdisease/`` (``train/<class>/`` + ``test/<class>/``, 35 classes, or one
    ``<class>/`` tree, or the image lists ``{train,test}.json`` + ``images/`` of Mammoth's mirror), downloaded
    from ``aimagelab-ta/cropdisease``. ``--dataset_config second_order_ta`` gives the ITA/IEL setting."""

    NAME = "seq-cropdisease"
    SETTING = "class-il"
    N_TASKS = 7
    N_CLASSES_PER_TASK = 5
    DEFAULTS = {"backbone": "vit", "n_epochs": 5, "batch_size": 128}
    FOLDER = "cropdisease"
    HF_REPO = "aimagelab-ta/cropdisease"
    TEST_RESIZE = 224
    MANIFESTS = ("train.json", "test.json")  # the layout of Mammoth's OneDrive mirror
    MANIFEST_KEYS = ("data", "labels")
    MANIFEST_IMAGE_DIR = "images"
