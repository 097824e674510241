"""ITA / IEL on real data: CIFAR-100 mini (10 tasks x 10 classes) with ImageNet EfficientNet-Lite0 weights, CPU.

The settings are the demo's (app/demo.py): one epoch, small alignment sets and, in this test only, the top-1
Fisher approximation ``--fisher_mc_classes 1``; the exact Fisher is covered by tests/test_second_order_math.py and
tests/test_speed_quick.py. Measured on an idle 2-core machine (96 px, seed 0): sgd 4.9 % (41 s), ITA 28.4 %
(81 s), ITA without its regulariser 10.6 % (76 s), IEL 31.9 % (78 s).
"""
import pytest

from tests.conftest import shared_file
from app.demo import IEL_ARGS, ITA_ARGS, ITA_UNREGULARISED_ARGS, SGD_ARGS, real_data_args
from app.runner import run


def final_accuracy(data, tmp_path, tag, model, extra):
    res = run(["--model", model, *real_data_args(data), "--n_epochs", "1", "--non_verbose",
               "--base_path", str(tmp_path / "data"), "--results_file", str(tmp_path / f"{tag}.json"),
               *extra])
    assert res["complete"]
    return res["final_class_il"]


@pytest.mark.timeout(1800)
def test_ita_and_iel_beat_fine_tuning_on_cifar100_mini(tmp_path):
    data = shared_file("cifar100_mini.npz")  # skips (not fails) only when the file is absent
    sgd = final_accuracy(data, tmp_path, "sgd", "sgd", SGD_ARGS)
    ita = final_accuracy(data, tmp_path, "ita", "ita", ITA_ARGS)
    ita_unregularised = final_accuracy(data, tmp_path, "ita_unreg", "ita", ITA_UNREGULARISED_ARGS)
    iel = final_accuracy(data, tmp_path, "iel", "iel", IEL_ARGS)
    print(f"final class-IL: sgd {sgd:.2f}  ITA {ita:.2f}  ITA without reg. {ita_unregularised:.2f}  IEL {iel:.2f}")
    assert ita >= sgd + 20
    assert iel >= sgd + 20
    assert ita_unregularised < ita
