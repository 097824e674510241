"""ITA / IEL on real data: CIFAR-100 mini (10 tasks x 10 classes) with ImageNet EfficientNet-Lite0 weights, CPU.

Cheaper settings than the published ones (one epoch, small alignment sets) and, in this test only, the top-1
Fisher approximation ``--fisher_mc_classes 1``; the exact Fisher is covered by tests/test_second_order_math.py.
"""
import os

import pytest

from tests.conftest import shared_file
from utils.runner import run

IMG_SIZE = "96"  # frozen-feature nearest-class-mean: 12% at 32 px, 27% at 64 px, 40% at 96 px, 44% at 128 px
CHEAP = ["--n_epochs", "1", "--batch_size", "16", "--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "5",
         "--num_samples_align_pretuning", "32", "--batch_size_align_pretuning", "32", "--fisher_mc_classes", "1",
         "--stats_batch_size", "256", "--lr", "0.001"]
HEAD_REG = ["--req_weight_cls", "1", "--simple_reg_weight_cls", "0.2"]
# Measured on the shared 2-core machine after the speed work (docs/speed.md): one ITA run with these settings at
# 64 px takes 57 s on an idle machine (was 226 s; alignment 42 -> 19 s, evaluation 60 -> 11 s, Fisher 26 -> 15 s)
# and reaches 19.9 % final class-IL; sgd reaches 3.9 % (64 px) / 4.9 % (96 px, 51 s). At 64 px the ITA margin
# (~16 points) is below the required 20, and at 96 px four runs exceed a ~4-minute budget; with
# --batch_size_align_pretuning 128 (fewer alignment steps) ITA at 96 px fell to 4.5 %. So the test stays opt-in
# (SECOND_ORDER_REAL_DATA=1) until settings meeting both the margin and the time budget are found.
needs_opt_in = pytest.mark.skipif(os.environ.get("SECOND_ORDER_REAL_DATA") != "1",
                                  reason="about 40 CPU-minutes on 2 cores; set SECOND_ORDER_REAL_DATA=1 to run it")


def final_accuracy(tmp_path, model, *extra):
    data = shared_file("cifar100_mini.npz")
    res = run(["--model", model, "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "10",
               "--img_size", IMG_SIZE, "--normalization", "half", "--backbone", "efficientnet_lite0", "--seed", "0",
               "--non_verbose", "--base_path", str(tmp_path / "data"),
               "--results_file", str(tmp_path / f"{model}_{len(extra)}.json"), *extra])
    assert res["complete"]
    return res["final_class_il"]


@needs_opt_in
def test_ita_and_iel_beat_fine_tuning_on_cifar100_mini(tmp_path):
    sgd = final_accuracy(tmp_path, "sgd", "--n_epochs", "1", "--batch_size", "16", "--lr", "0.01", "--optim_mom", "0.9")
    ita = final_accuracy(tmp_path, "ita", *CHEAP, "--alpha_ita", "1", *HEAD_REG)
    ita_unregularised = final_accuracy(tmp_path, "ita", *CHEAP, "--alpha_ita", "0", "--req_weight_cls", "0")
    iel = final_accuracy(tmp_path, "iel", *CHEAP, "--beta_iel", "1", *HEAD_REG)
    print(f"final class-IL: sgd {sgd:.2f}  ITA {ita:.2f}  ITA without reg. {ita_unregularised:.2f}  IEL {iel:.2f}")
    assert ita >= sgd + 20
    assert iel >= sgd + 20
    assert ita_unregularised < ita
