"""seq-custom and seq-cifar10 on files the tests generate in the real on-disk formats."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import get_dataset
from tests.conftest import make_npz
from app.config import parse_args
from utils.errors import UserError


def dataset_for(*argv):
    return get_dataset(parse_args(["--model", "sgd", "--lr", "0.1", "--batch_size", "4", *argv]))


def test_seq_custom_npz_tasks_and_shapes(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=4, size=8)
    ds = dataset_for("--dataset", "seq-custom", "--data_path", path, "--n_tasks", "3")
    assert ds.N_TASKS == 3 and ds.N_CLASSES == 6
    for t in range(3):
        train, test = ds.get_data_loaders()
        xs, ys, not_aug = next(iter(train))
        assert xs.shape[1:] == (3, 8, 8) and not_aug.shape[1:] == (3, 8, 8)
        labels = torch.cat([b[1] for b in train]).unique().tolist()
        assert labels == [2 * t, 2 * t + 1]
        assert torch.cat([b[1] for b in test]).unique().tolist() == [2 * t, 2 * t + 1]
        assert next(iter(test))[0].shape[1:] == (3, 8, 8)
    assert len(ds.test_loaders) == 3


def test_seq_custom_nhwc_resize_and_uneven_split(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=5, per_class=3, size=8, channels_first=False,
                    class_names=np.array(list("abcde")))
    ds = dataset_for("--dataset", "seq-custom", "--data_path", path, "--classes_per_task", "3,2", "--img_size", "16")
    assert [ds.get_offsets(t) for t in range(2)] == [(0, 3), (3, 5)]
    train, _ = ds.get_data_loaders()
    assert next(iter(train))[0].shape[1:] == (3, 16, 16)
    assert ds.get_class_names() == list("abcde")


def test_seq_custom_permutation_relabels_both_splits(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=3)
    ds = dataset_for("--dataset", "seq-custom", "--data_path", path, "--n_tasks", "2", "--permute_classes", "1",
                     "--seed", "5")
    order = np.random.RandomState(5).permutation(4)
    raw = np.load(path)
    train, test = ds.splits
    assert train.targets.tolist() == order[raw["y_train"]].tolist()
    assert test.targets.tolist() == order[raw["y_test"]].tolist()
    # task 0 holds the classes whose new label is 0 or 1
    train_loader, _ = ds.get_data_loaders()
    assert sorted(torch.cat([b[1] for b in train_loader]).unique().tolist()) == [0, 1]


@pytest.mark.parametrize("value, n_val", [("20", 2), ("0.2", 2), ("15", 2), ("5", 1)])
def test_validation_split_replaces_the_test_set(tmp_path, value, n_val):
    """Mammoth's percentage (values below 1 are fractions): ceil(10 * p / 100) images per class."""
    path = make_npz(str(tmp_path / "d.npz"), n_classes=2, per_class=10)
    ds = dataset_for("--dataset", "seq-custom", "--data_path", path, "--n_tasks", "1", "--validation", value)
    train, test = ds.splits
    assert len(train) == 20 - 2 * n_val and len(test) == 2 * n_val
    assert sorted(test.targets.tolist()) == [0] * n_val + [1] * n_val


def test_image_folder(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 3), ("test", 2)):
        for c, color in (("cat", 10), ("dog", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 12), (color, i, 0)).save(root / split / c / f"{i}.png")
    ds = dataset_for("--dataset", "seq-custom", "--data_path", str(root), "--n_tasks", "2", "--img_size", "16")
    train, test = ds.get_data_loaders()
    x, y, not_aug = next(iter(train))
    assert x.shape[1:] == (3, 16, 16) and not_aug.shape[1:] == (3, 16, 16) and set(y.tolist()) == {0}
    assert ds.get_class_names() == ["cat", "dog"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("y_test"), "lacks the keys y_test"),
    (lambda d: d.update(y_train=d["y_train"][:-1]), "has .* images but y_train has"),
    (lambda d: d.update(x_train=d["x_train"].astype(np.float32)), "must be uint8"),
    (lambda d: d.update(y_train=d["y_train"] - 1), "labels must be integers in"),
])
def test_seq_custom_bad_npz(tmp_path, mutate, message):
    path = make_npz(str(tmp_path / "d.npz"))
    data = dict(np.load(path))
    mutate(data)
    np.savez(path, **data)
    with pytest.raises(UserError, match=message):
        dataset_for("--dataset", "seq-custom", "--data_path", path, "--n_tasks", "2")


def test_seq_custom_corrupt_or_missing_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="cannot read .* as an npz"):
        dataset_for("--dataset", "seq-custom", "--data_path", str(bad))
    with pytest.raises(UserError, match="does not exist"):
        dataset_for("--dataset", "seq-custom", "--data_path", str(tmp_path / "nope.npz"))
    with pytest.raises(UserError, match="needs --data_path"):
        dataset_for("--dataset", "seq-custom")
    path = make_npz(str(tmp_path / "d.npz"), n_classes=4)
    with pytest.raises(UserError, match="sums to 5 but"):
        dataset_for("--dataset", "seq-custom", "--data_path", path, "--classes_per_task", "3,2")


def write_cifar10(root, per_class=2, seed=0):
    rng = np.random.RandomState(seed)
    folder = os.path.join(root, "CIFAR10", "cifar-10-batches-py")
    os.makedirs(folder)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in files:
        labels = [int(v) for v in np.repeat(np.arange(10), per_class)]
        data = rng.randint(0, 255, size=(len(labels), 3072)).astype(np.uint8)
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, fh)
    return folder


def test_seq_cifar10_reads_the_official_layout(tmp_path):
    write_cifar10(str(tmp_path))
    ds = dataset_for("--dataset", "seq-cifar10", "--base_path", str(tmp_path))
    train, test = ds.splits
    assert len(train) == 100 and len(test) == 20 and train.data.shape == (100, 32, 32, 3)
    assert ds.N_TASKS == 5
    loader, _ = ds.get_data_loaders()
    x, y, not_aug = next(iter(loader))
    assert x.shape[1:] == (3, 32, 32) and set(torch.cat([b[1] for b in loader]).tolist()) == {0, 1}


def test_seq_cifar10_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match=r"cifar10 files missing .* put cifar-10-python.tar.gz"):
        dataset_for("--dataset", "seq-cifar10", "--base_path", str(tmp_path / "none")).splits
    folder = write_cifar10(str(tmp_path))
    with open(os.path.join(folder, "data_batch_3"), "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(UserError, match="corrupt CIFAR file .*data_batch_3"):
        dataset_for("--dataset", "seq-cifar10", "--base_path", str(tmp_path)).splits


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    folder = write_cifar10(str(tmp_path))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(os.path.join(folder, "test_batch"), "wb") as fh:
        pickle.dump({"data": Evil(), "labels": []}, fh)
    with pytest.raises(UserError, match="corrupt CIFAR file"):
        dataset_for("--dataset", "seq-cifar10", "--base_path", str(tmp_path)).splits


def test_per_instance_structure_never_changes_the_class_attributes(tmp_path):
    """A dataset config, --joint and seq-custom's data set the instance's lower-case values; the UPPER_CASE
    class attributes (Mammoth's API) keep their declarations, and on an instance they read the run's value."""
    from datasets.seq_cifar100 import SequentialCIFAR100
    from datasets.seq_custom import SequentialCustom
    from datasets.rot_mnist import RotatedMNIST
    args = parse_args(["--model", "sgd", "--lr", "0.1", "--dataset", "seq-cifar100", "--dataset_config", "5tasks"])
    ds = get_dataset(args)
    assert (ds.n_tasks, ds.n_classes_per_task, ds.N_TASKS) == (5, 20, 5)
    assert (SequentialCIFAR100.N_TASKS, SequentialCIFAR100.N_CLASSES_PER_TASK) == (10, 10)
    assert SequentialCIFAR100.CLASS_NAMES is not ds.class_names and ds.class_names == SequentialCIFAR100.CLASS_NAMES
    ds.N_TASKS = 7  # a Mammoth dataset file's assignment sets the run's value
    assert ds.n_tasks == 7 and SequentialCIFAR100.N_TASKS == 10 and get_dataset(args).n_tasks == 5
    joint = get_dataset(parse_args(["--model", "sgd", "--lr", "0.1", "--dataset", "rot-mnist", "--joint", "1"]))
    assert (joint.N_TASKS, joint.n_domains, RotatedMNIST.N_TASKS) == (1, 20, 20)
    path = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=4, size=8)
    custom = dataset_for("--dataset", "seq-custom", "--data_path", path, "--n_tasks", "3")
    assert (custom.n_tasks, custom.size, custom.in_chans) == (3, (8, 8), 3)
    assert (SequentialCustom.N_TASKS, SequentialCustom.SIZE, SequentialCustom.MEAN) == (0, (32, 32), None)
