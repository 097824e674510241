"""Image-folder datasets (ImageNet-R, EuroSAT, RESISC45, MIT-67, CropDisease) on tiny generated copies."""
import json
import os

import numpy as np
import pytest
import yaml

from tests.dataset_builders import check_tasks, dataset_for, sample_shapes, write_class_tree
from utils.errors import UserError

VIT = ("--backbone", "resnet18")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("CL_NO_DOWNLOAD", "1")


def labels_of(paths, classes):
    return [sorted(classes).index(os.path.basename(os.path.dirname(p))) for p in paths]


def test_seq_imagenet_r_seeded_split_and_permutation(tmp_path):
    wnids = [f"n{i:08d}" for i in range(200)][::-1]
    write_class_tree(tmp_path / "imagenet-r", wnids, per_class=2)
    ds = dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT)
    train, test = ds.splits
    assert (len(train), len(test)) == (200, 200)
    raw_train, raw_test = labels_of(train.data, wnids), labels_of(test.data, wnids)
    check_tasks(ds, [20] * 10, raw_train, raw_test)
    assert ds.get_class_names() == sorted(wnids)
    assert sample_shapes(ds) == ((3, 224, 224), (3, 224, 224), (3, 224, 224))
    again = dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT, "--seed", "9")
    assert again.splits[1].data == test.data  # the split does not depend on --seed
    order = np.random.RandomState(2).permutation(200)
    check_tasks(dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT, "--permute_classes", "1", "--seed", "2"),
                [20] * 10, raw_train, raw_test, order=order)


def test_seq_imagenet_r_split_fraction(tmp_path):
    write_class_tree(tmp_path / "imagenet-r", [f"n{i:08d}" for i in range(200)], per_class=1)
    write_class_tree(tmp_path / "imagenet-r", ["n00000000"], per_class=10)  # 10 images: 2 go to the test set
    train, test = dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT).splits
    assert np.sum(test.targets == 0) == 2 and np.sum(train.targets == 0) == 8
    assert np.sum(test.targets == 1) == 0 and np.sum(train.targets == 1) == 1


def test_seq_imagenet_r_reads_a_mammoth_split_file(tmp_path):
    wnids = [f"n{i:08d}" for i in range(200)]
    write_class_tree(tmp_path / "imagenet-r", wnids, per_class=2)
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    targets = np.random.RandomState(0).permutation(200)
    for name, i in (("imagenet-r_train.yaml", 0), ("imagenet-r_test.yaml", 1)):
        data = [f"data/imagenet-r/{w}/{w}_{i}.jpg" for w in wnids]
        (split_dir / name).write_text(yaml.safe_dump({"data": data, "targets": targets.tolist()}))
    ds = dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT, "--imagenet_r_split", str(split_dir))
    check_tasks(ds, [20] * 10, targets, targets)
    assert ds.splits[0].data[0] == os.path.join(str(tmp_path), "imagenet-r", wnids[0], f"{wnids[0]}_0.jpg")
    os.remove(tmp_path / "imagenet-r" / wnids[3] / f"{wnids[3]}_1.jpg")
    with pytest.raises(UserError, match="1 images of .*imagenet-r_test.yaml are missing"):
        dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT, "--imagenet_r_split", str(split_dir)).splits


def test_seq_imagenet_r_incomplete_and_missing_data(tmp_path):
    write_class_tree(tmp_path / "imagenet-r", [f"n{i:08d}" for i in range(150)], per_class=1)
    with pytest.raises(UserError, match="found 150 class folders .* expected 200"):
        dataset_for(tmp_path, "--dataset", "seq-imagenet-r", *VIT).splits
    with pytest.raises(UserError, match="imagenet-r.tar") as err:
        dataset_for(tmp_path / "none", "--dataset", "seq-imagenet-r", *VIT).splits
    assert "CL_NO_DOWNLOAD" in str(err.value) and "\n" not in str(err.value)


def test_seq_eurosat_rgb_split_json(tmp_path):
    classes = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
               "PermanentCrop", "Residential", "River", "SeaLake"]
    root = tmp_path / "eurosat"
    write_class_tree(root / "2750", classes, per_class=3, size=(64, 64))
    split = {"train": [[f"{c}/{c}_{i}.jpg", k, c] for k, c in enumerate(classes) for i in (0, 1)],
             "val": [], "test": [[f"{c}/{c}_2.jpg", k, c] for k, c in enumerate(classes)][::-1]}
    (root / "split.json").write_text(json.dumps(split))
    ds = dataset_for(tmp_path, "--dataset", "seq-eurosat-rgb", *VIT)
    assert ds.args.n_epochs == 5 and ds.MEAN[0] == pytest.approx(0.48145466)
    check_tasks(ds, [2] * 5, [e[1] for e in split["train"]], [e[1] for e in split["test"]])
    assert ds.get_class_names() == classes
    assert sample_shapes(ds) == ((3, 224, 224), (3, 224, 224), (3, 224, 224))
    (root / "split.json").write_text('{"train": [[')
    with pytest.raises(UserError, match="cannot read .*split.json"):
        dataset_for(tmp_path, "--dataset", "seq-eurosat-rgb", *VIT).splits


def test_seq_resisc45_both_layouts(tmp_path):
    classes = [f"class_{i:02d}" for i in range(45)]
    write_class_tree(tmp_path / "NWPU-RESISC45", classes, per_class=5)
    ds = dataset_for(tmp_path, "--dataset", "seq-resisc45", *VIT)
    train, test = ds.splits
    assert (len(train), len(test)) == (180, 45)
    check_tasks(ds, [5] * 9, labels_of(train.data, classes), labels_of(test.data, classes))
    other = tmp_path / "split_layout"
    write_class_tree(other / "NWPU-RESISC45" / "train", classes, per_class=1)
    write_class_tree(other / "NWPU-RESISC45" / "test", classes[::-1], per_class=1)
    ds = dataset_for(other, "--dataset", "seq-resisc45", *VIT)
    check_tasks(ds, [5] * 9, list(range(45)), list(range(45)))
    assert ds.splits[0].data[0].endswith(os.path.join("train", "class_00", "class_00_0.jpg"))
    x, y, not_aug = ds.train_dataset(0)[0]
    x_test, _ = ds.test_dataset(0)[0]
    assert x.shape == not_aug.shape == x_test.shape == (3, 224, 224)


def test_seq_mit67_official_split_lists(tmp_path):
    classes = [f"room{i:02d}" for i in range(67)]
    root = tmp_path / "MIT67"
    write_class_tree(root / "Images", classes, per_class=2)
    (root / "TrainImages.txt").write_text("\n".join(f"{c}/{c}_0.jpg" for c in classes) + "\n")
    (root / "TestImages.txt").write_text("\n".join(f"{c}/{c}_1.jpg" for c in classes[::-1]) + "\n")
    ds = dataset_for(tmp_path, "--dataset", "seq-mit67", *VIT)
    assert ds.args.batch_size == 4 and ds.N_CLASSES == 67
    check_tasks(ds, [7] * 7 + [6] * 3, list(range(67)), list(range(67))[::-1])
    assert sample_shapes(ds) == ((3, 224, 224), (3, 224, 224), (3, 224, 224))
    order = np.random.RandomState(5).permutation(67)
    check_tasks(dataset_for(tmp_path, "--dataset", "seq-mit67", *VIT, "--permute_classes", "1", "--seed", "5"),
                [7] * 7 + [6] * 3, list(range(67)), order=order)
    os.remove(root / "Images" / "room05" / "room05_1.jpg")
    with pytest.raises(UserError, match="1 images listed in .*TestImages.txt are missing"):
        dataset_for(tmp_path, "--dataset", "seq-mit67", *VIT).splits


def test_seq_cropdisease_and_second_order_config(tmp_path):
    classes = [f"plant_{i:02d}" for i in range(35)]
    root = tmp_path / "cropdisease"
    write_class_tree(root / "train", classes, per_class=1, size=(32, 32))
    write_class_tree(root / "test", classes, per_class=1, size=(32, 32))
    ds = dataset_for(tmp_path, "--dataset", "seq-cropdisease", *VIT, "--dataset_config", "second_order_ta")
    assert ds.args.optimizer == "adamw" and ds.args.n_epochs == 5
    check_tasks(ds, [5] * 7, list(range(35)), list(range(35)))
    assert sample_shapes(ds) == ((3, 224, 224), (3, 224, 224), (3, 224, 224))
    assert [type(t).__name__ for t in ds.get_test_transform().transforms] == ["Resize", "ToTensor", "Normalize"]
    broken = root / "test" / "plant_00" / "plant_00_0.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    with pytest.raises(UserError, match="cannot read image .*plant_00_0.jpg"):
        ds.test_dataset(0)[0]
