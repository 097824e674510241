"""benchmarks/gpu_check.py on the CPU (small ViT through CL_TEST_VIT_B16_ARCH): the same script a GPU machine runs."""
import json
import os

import numpy as np
import pytest

from benchmarks import gpu_check
from tests.conftest import SHARED_DATA, shared_missing
from tests.conftest import read_file


def mini_cifar100():
    for folder in (SHARED_DATA, os.path.dirname(gpu_check.DEFAULT_DATA)):
        path = os.path.join(folder, "cifar100_mini.npz")
        if os.path.isfile(path):
            return path
    shared_missing(os.path.join(SHARED_DATA, "cifar100_mini.npz"))


def test_cifar100_is_written_in_the_official_layout_the_loader_reads(tmp_path):
    from datasets.utils.cifar import load_cifar
    data = mini_cifar100()
    folder = gpu_check.write_cifar100(data, str(tmp_path))
    assert sorted(os.listdir(folder)) == ["meta", "test", "train"]
    train, test = load_cifar("cifar100", str(tmp_path), download=False)
    with np.load(data) as npz:
        for source, split in ((train, "train"), (test, "test")):
            assert np.array_equal(source.targets, npz[f"y_{split}"])
            assert np.array_equal(source.data, npz[f"x_{split}"].transpose(0, 2, 3, 1))  # HWC, as loaded


def test_gpu_check_runs_the_published_lines_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", "cpu", "--data", mini_cifar100(), "--out", str(out)]) == 0
    report = json.loads(read_file(out))
    assert report["ok"] and [(r["line"], r["precision"]) for r in report["runs"]] == [("ita", "fp32"),
                                                                                      ("iel", "bf16")]
    for run in report["runs"]:
        assert run["tasks_done"] == 2 and run["finite"] and not run["misplaced_tensors"]
        argv = run["argv"]
        assert "--model_config" in argv and argv[argv.index("--model") + 1] == run["line"]
        # the run's own flags reach it (the worker once swallowed --device and --n_epochs: 20 epochs on the CPU)
        assert argv[argv.index("--device") + 1] == run["device"] == "cpu" and argv[argv.index("--n_epochs") + 1] == "1"
        assert argv[argv.index("--precision") + 1] == run["precision"] and "--debug_mode" in argv
        for phase in ("features", "pretuning", "fisher", "training", "evaluation"):
            assert run["seconds"][phase] > 0, phase
        assert run["seconds"]["gmms"] >= 0  # timed, but a few ms on debug-sized data: 0.00 once rounded
        assert run["penalties"] and run["penalties_finite"]


def test_full_mode_resumes_after_task_2_and_reports_fisher_flops(tmp_path):
    out = tmp_path / "full.json"
    # an extra run flag passes through to both halves
    assert gpu_check.main(["--device", "cpu", "--full", "--data", mini_cifar100(), "--out", str(out),
                           "--num_epochs_align_pretuning", "1"]) == 0
    report = json.loads(out.read_text())
    full = report["full"]
    assert report["ok"] and full["ok"] and report["runs"] == []
    first, second = full["runs"]
    assert first["tasks_done"] == gpu_check.FULL_STOP and second["tasks_done"] == full["tasks_done"] == 3
    for half in (first, second):
        argv = half["argv"]
        # the line as users run it: the device's defaults (no -O, no --fisher_precision), every image
        assert "-O" not in argv and "--fisher_precision" not in argv
        assert "--debug_mode" not in argv and "--model_config" in argv
        assert argv[argv.index("--num_epochs_align_pretuning") + 1] == "1"
        assert not half["misplaced_tensors"] and half["finite"]
    assert "--loadcheck" in second["argv"] and "--loadcheck" not in first["argv"]
    assert second["seconds"]["fisher"] > 0 and full["seconds"]["fisher"] >= second["seconds"]["fisher"]
    # FLOPs of the three tasks' Fisher passes: every training image, one class backward per seen class
    expected = gpu_check.fisher_flops(mini_cifar100(), 3, 10, gpu_check.DIMS["cpu"])
    assert full["fisher_flops"] == expected > 0
    assert abs(full["fisher_flop_per_s"] - expected / full["seconds"]["fisher"]) < 1e-6 * expected
    sq = full["square_sum"]
    assert sq["chosen"] in ("inplace", "norm", "einsum", "onednn") and len(sq["fastest"]) == len(sq["rows"]) == 2
    assert all(max(r["max_rel_err"].values()) < 1e-5 for r in sq["rows"])
    split = full["split_gemm"]  # the bf16x3 products beside fp32 (no TF32, no Triton on a CPU)
    for r in split.values():
        assert sorted(r["forms"]) == ["bf16x3_torch", "fp32"]
        assert r["forms"]["fp32"]["rel_err"] < r["forms"]["bf16x3_torch"]["rel_err"] < 2e-5
    assert gpu_check.split_gemm_lines(split)[0].startswith("input_grad_qkv fp32: ")
