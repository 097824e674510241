"""Bad input, second set: each case is one ``error:`` line naming the file or flag, the bad value and the
fix, exit code 2, no traceback and no new file."""
import os

import numpy as np
import pytest

import app.config
from datasets.seq_custom import SequentialCustom
from tests.bad_inputs import (folder_run_args, npy_bytes, npy_with_header, png_header_only, run_expecting_error,
                              write_image_folder, write_npz_members)
from tests.conftest import make_npz, tiny_run_args
from app.config import parse_args
from utils.errors import UserError, one_line
from utils.resources import check_run_memory, is_out_of_memory, out_of_memory_message
from tests.conftest import read_file


@pytest.fixture
def base(tmp_path):
    return make_npz(str(tmp_path / "good.npz"))


def argv_for(data, tmp_path, *extra, model="sgd"):
    return ["--model", model, *tiny_run_args(data, tmp_path, "--results_file", str(tmp_path / "res" / "r.json")),
            *extra]


def variant(base, path, **changes):
    arrays = dict(np.load(base))
    arrays.update(changes)
    np.savez(path, **arrays)
    return str(path)


def test_npz_train_and_test_images_must_match(base, tmp_path, capsys):
    x_test = np.load(base)["x_test"]
    smaller = variant(base, tmp_path / "size.npz", x_test=x_test[:, :, :6, :6].copy())
    line = run_expecting_error(capsys, argv_for(smaller, tmp_path), tmp_path)
    assert "size.npz: x_train images are 8x8 with 3 channel(s) but x_test images are 6x6 with 3" in line
    assert "must have the same size and channels" in line
    gray = variant(base, tmp_path / "gray.npz", x_test=x_test[:, 0].copy())
    line = run_expecting_error(capsys, argv_for(gray, tmp_path), tmp_path)
    assert "x_test images are 8x8 with 1" in line


def test_npy_instead_of_npz(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8, 3), np.uint8))
    line = run_expecting_error(capsys, argv_for(str(tmp_path / "x.npy"), tmp_path), tmp_path)
    assert "x.npy is a .npy file" in line and "numpy.savez" in line


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32), "99999999999999999999"])
def test_seed_out_of_range(base, tmp_path, capsys, seed):
    argv = argv_for(base, tmp_path)
    argv[argv.index("--seed") + 1] = seed
    line = run_expecting_error(capsys, argv, tmp_path)
    assert "--seed" in line and f"got '{seed}'" in line and "[0, 2**32 - 1]" in line
    argv[argv.index("--seed") + 1] = str(2 ** 32 - 1)
    assert parse_args(argv).seed == 2 ** 32 - 1


@pytest.mark.parametrize("extra, model, fragments", [
    (["--img_size", "1000000"], "sgd", ["--img_size 1000000", "3x1000000x1000000", "use a smaller --img_size"]),
    (["--buffer_size", str(10 ** 13)], "er", [f"--buffer_size {10 ** 13}", "use a smaller --buffer_size"]),
    (["--num_workers", str(10 ** 9)], "sgd", [f"--num_workers {10 ** 9}", "use at most"]),
    (["--n_tasks", str(10 ** 12)], "sgd", [f"--n_tasks {10 ** 12} exceeds the 4 classes"]),
])
def test_memory_shaped_flags(base, tmp_path, capsys, extra, model, fragments):
    argv = argv_for(base, tmp_path, model=model)
    if "--n_tasks" in extra:
        argv[argv.index("--n_tasks") + 1] = extra[1]
        extra = []
    line = run_expecting_error(capsys, argv + extra, tmp_path)
    assert all(f in line for f in fragments), line
    if "needs" in line:
        assert "of memory but" in line


def test_batch_sizes_are_checked_against_memory(base, tmp_path, monkeypatch, capsys):
    """A batch never holds more than a task: a huge --batch_size is fine on small data, not on a small machine."""
    argv = argv_for(base, tmp_path)
    argv[argv.index("--batch_size") + 1] = "1000000000000"
    args = parse_args(argv)
    dataset = SequentialCustom(args)
    check_run_memory(args, dataset)  # 12 images per task: no error
    image = 3 * 8 * 8 * 4
    monkeypatch.setenv("CL_MEMORY_LIMIT", str(3 * image * 12 - 1))
    with pytest.raises(UserError, match=r"--batch_size 1000000000000: a training batch of 12 3x8x8 images needs"):
        check_run_memory(args, dataset)
    monkeypatch.setenv("CL_MEMORY_LIMIT", str(3 * image - 1))
    with pytest.raises(UserError, match=r"the dataset's image size 8: one 3x8x8 image needs 2.2 KB of memory"):
        check_run_memory(args, dataset)


def test_image_dimensions_in_the_data(base, tmp_path, monkeypatch, capsys):
    good = dict(np.load(base))
    members = {k: npy_bytes(v) for k, v in good.items()}
    members["x_train"] = npy_with_header((10 ** 5, 3, 10 ** 4, 10 ** 4))  # a header claiming 30 TB
    bogus = write_npz_members(tmp_path / "bogus.npz", members)
    line = run_expecting_error(capsys, argv_for(bogus, tmp_path), tmp_path)
    assert "bogus.npz: array x_train declares shape (100000, 3, 10000, 10000) (27.3 TB)" in line
    monkeypatch.setenv("CL_MEMORY_LIMIT", "4000")  # a real file larger than the machine's memory
    line = run_expecting_error(capsys, argv_for(base, tmp_path), tmp_path)
    assert "good.npz (array x_train of shape (24, 3, 8, 8), and the others) needs" in line
    monkeypatch.delenv("CL_MEMORY_LIMIT")
    root = write_image_folder(tmp_path / "folder")
    with open(os.path.join(root, "train", "a", "0.png"), "wb") as fh:
        fh.write(png_header_only(40000, 40000))
    line = run_expecting_error(capsys, folder_run_args(root, tmp_path), tmp_path)
    assert "cannot read image" in line and "0.png" in line and "remove or replace the file" in line


@pytest.mark.parametrize("workers", ["0", "2"])
def test_corrupt_jpeg_in_an_image_folder(tmp_path, capsys, workers):
    root = write_image_folder(tmp_path / "folder", ext="jpg")
    bad = os.path.join(root, "train", "b", "1.jpg")
    data = read_file(bad, "rb")
    with open(bad, "wb") as fh:
        fh.write(data[:20] + os.urandom(40))
    line = run_expecting_error(capsys, folder_run_args(root, tmp_path, "--num_workers", workers), tmp_path)
    assert line.startswith(f"error: cannot read image {bad}") and "remove or replace the file" in line


def test_worker_errors_keep_the_original_message():
    wrapped = UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1\nutils.errors.UserError: cannot read image a.jpg: bad; fix")
    assert one_line(wrapped) == "cannot read image a.jpg: bad; fix"
    assert one_line(UserError("plain")) == "plain"


@pytest.fixture
def configs(tmp_path, monkeypatch):
    ds_dir, model_dir = tmp_path / "dsconf", tmp_path / "modelconf"
    (ds_dir / "seq-custom").mkdir(parents=True)
    model_dir.mkdir()
    monkeypatch.setattr(app.config, "DATASET_CONFIG_DIR", str(ds_dir))
    monkeypatch.setattr(app.config, "MODEL_CONFIG_DIR", str(model_dir))
    return ds_dir / "seq-custom", model_dir


@pytest.mark.parametrize("model_yaml, extra, fragments", [
    ("default:\n  - lr\n  - 0.1\n", [], ["section 'default' of", "sgd.yaml must be a mapping", "not a list"]),
    ("default: 0.1\n", [], ["section 'default'", "not a float"]),
    ("seq-custom:\n  - n_epochs: 2\n", ["--model_config", "best"], ["section 'seq-custom'", "not a list"]),
    ("seq-custom:\n  '200': [1, 2]\n", ["--model_config", "best", "--buffer_size", "200"], ["section '200'"]),
    ("default:\n  lr: [0.1, 0.2]\n", [], ["bad value '0.1,0.2' for 'lr'", "expected a number > 0"]),
    ("default:\n  lr: {a: 1}\n", [], ["bad value for 'lr'", "a mapping", "give a single value"]),
    ("default:\n  seed: -1\n", [], ["bad value -1 for 'seed'", "[0, 2**32 - 1]"]),
])
def test_model_yaml(base, tmp_path, capsys, configs, model_yaml, extra, fragments):
    (configs[1] / "sgd.yaml").write_text(model_yaml)
    line = run_expecting_error(capsys, argv_for(base, tmp_path, *extra), tmp_path)
    assert all(f in line for f in fragments), line


@pytest.mark.parametrize("dataset_yaml, fragments", [
    ("MEAN: [0.5, 0.5]\nSTD: [0.5, 0.5]\n", ["MEAN of the seq-custom dataset config 'bad' has 2 values but the images "
                                             "have 3 channel(s)", "one value per channel"]),
    ("MEAN: [0.5, 0.5, 0.5]\nSTD: [0.5, 0.0, 0.5]\n", ["STD in", "bad.yaml must be a list of numbers > 0"]),
    ("MEAN: [0.5, 0.5, 0.5]\nSTD: [0.5, 0.5]\n", ["MEAN and STD in", "one value per channel each"]),
    ("MEAN: {r: 0.5}\nSTD: [0.5]\n", ["MEAN in", "must be a list of numbers"]),
    ("TRANSFORM:\n  - ToTensor\n  - Normalize: {mean: [0.5, 0.5, 0.5], std: [0.2, 0, 0.2]}\n",
     ["Normalize std must be > 0"]),
    ("TRANSFORM:\n  - ToTensor\n  - Normalize: {mean: [0.5], std: [0.2, 0.2]}\n",
     ["Normalize std has 2 values but the images have 3 channel(s)"]),
    ("TRANSFORM: {ToTensor: {}}\n", ["TRANSFORM in", "must be a list of torchvision transforms"]),
    ("N_TASKS: [2]\n", ["N_TASKS in", "must be an integer >= 1, got [2]"]),
    ("SIZE: [8, -8]\n", ["SIZE in", "an image size"]),
    ("batch_size: {a: 1}\n", ["bad value for 'batch_size'", "a mapping"]),
])
def test_dataset_yaml(base, tmp_path, capsys, configs, dataset_yaml, fragments):
    (configs[0] / "bad.yaml").write_text(dataset_yaml)
    line = run_expecting_error(capsys, argv_for(base, tmp_path, "--dataset_config", "bad", "--normalization", "none"),
                               tmp_path)
    assert all(f in line for f in fragments), line


def test_sparse_labels_are_remapped_with_a_note(tmp_path, capsys):
    x = np.zeros((8, 8, 8, 3), np.uint8)
    y = np.array([0, 0, 5, 5, 9, 9, 20, 20])
    np.savez(tmp_path / "sparse.npz", x_train=x, y_train=y, x_test=x[:4], y_test=np.array([20, 9, 5, 0]),
             class_names=np.array([f"c{i}" for i in range(21)]))
    args = parse_args(argv_for(str(tmp_path / "sparse.npz"), tmp_path))
    dataset = SequentialCustom(args)
    assert "the labels (0, 5, 9, 20) are not 0..3; they are remapped to 0..3 in sorted order" in capsys.readouterr().err
    assert dataset.N_CLASSES == 4 and dataset.N_TASKS == 2
    train, test = dataset.splits
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and test.targets.tolist() == [3, 2, 1, 0]
    assert dataset.get_class_names() == ["c0", "c5", "c9", "c20"]


def test_empty_class_folders_are_ignored_with_a_note(tmp_path, capsys):
    root = write_image_folder(tmp_path / "folder")
    os.makedirs(os.path.join(root, "train", "zz_empty"))
    dataset = SequentialCustom(parse_args(folder_run_args(root, tmp_path)))
    assert "class folders without images are ignored: zz_empty" in capsys.readouterr().err
    assert dataset.N_CLASSES == 4


def test_an_allocation_no_check_foresaw_names_the_largest_values(base, tmp_path, capsys):
    """L2P's prompt pool is pool_size x length x dim floats: --pool_size 10**10 asks for 5.8 TB at construction."""
    line = run_expecting_error(capsys, argv_for(base, tmp_path, "--pool_size", str(10 ** 10), model="l2p"), tmp_path)
    assert line.startswith("error: out of memory trying to allocate 5.8 TB; the largest integer values given: "
                           f"--pool_size {10 ** 10}, "), line
    cuda = RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB total capacity)")
    assert out_of_memory_message(cuda, ["--lora_r=4096", "--lr", "0.1"]).startswith(
        "out of memory trying to allocate 20.00 GiB; the largest integer values given: --lora_r 4096;")
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
