"""benchmarks/fisher_precision.py on tiny data: fp32, TF32 (emulated on the CPU) and -O 2 on two datasets, the
paired Fisher passes (same network, head and images) and the run-against-run Fisher errors, the paired class-IL
changes and the rule of docs/speed.md."""
import json

import numpy as np
import pytest
import torch

from benchmarks import fisher_precision
from tests.conftest import make_npz

TINY = ["--n_tasks", "2", "--img_size", "8", "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1",
        "--num_heads", "2", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
        "--fisher_mc_classes", "all"]


def test_variants_on_two_datasets_and_the_verdict(tmp_path, capsys):
    data = [make_npz(str(tmp_path / f"d{i}.npz"), n_classes=4, per_class=6) for i in range(2)]
    out = tmp_path / "fp.json"
    assert fisher_precision.main(["--data", *data, "--seeds", "0", "--img_size", "8", "--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert list(s) == ["fp32", "tf32", "O2"] and res["device"] == "cpu"
    assert sorted(s["fp32"]["datasets"]) == ["d0.npz", "d1.npz"]
    assert s["fp32"]["fisher_rel_err"] == 0.0 and s["fp32"]["worst_class_il_change"] == 0.0
    # the paired passes: TF32 moves the Fisher by about TF32's rounding (2^-11 relative per operand), not more
    assert 1e-6 < s["tf32"]["fisher_rel_err"] < 1e-2
    for data_name, d in s["tf32"]["datasets"].items():
        fp32_run = next(r for r in res["runs"] if r["variant"] == "fp32" and r["data"] == data_name)
        assert [row["task"] for row in fp32_run["paired"]] == [1, 2]
        assert [row["classes"] for row in fp32_run["paired"]] == [2, 4]
        assert d["paired_fisher_err"] == {e: max(row["errors"]["tf32"][e] for row in fp32_run["paired"])
                                          for e in ("exact", "top1")}
        assert all(row["run_check"] == 0.0 for row in fp32_run["paired"])  # the run's images and weights
    assert s["tf32"]["fisher_rel_err"] == max(max(d["paired_fisher_err"].values())
                                              for d in s["tf32"]["datasets"].values())
    assert s["tf32"]["run_fisher_err"] > 0.0  # the first measure is still reported
    assert all(r["tf32_emulated"] for r in res["runs"] if r["variant"] == "tf32")
    assert all(not r["paired"] for r in res["runs"] if r["variant"] != "fp32")
    for v in ("tf32", "O2"):
        for d in s[v]["datasets"].values():
            assert len(d["class_il_change"]) == 1
    assert s["O2"]["fisher_rel_err"] == 0.0  # -O 2 keeps the Fisher pass in fp32: no paired error
    for data_name, d in s["O2"]["datasets"].items():
        assert d["class_il_change"][0] == d["class_il"][0] - s["fp32"]["datasets"][data_name]["class_il"][0]
    assert res["passes"] == {v: fisher_precision.passes(v, s[v]) for v in s}
    assert "tf32 passes" in capsys.readouterr().out or not res["passes"]["tf32"]


def test_paired_passes_leave_the_run_unchanged_and_match_its_fisher(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    top1 = fisher_precision.override(TINY, ["--fisher_mc_classes", "1"])  # the run's own estimator is top-1: checked against its F_t

    def fp32_run(paired):
        return fisher_precision.one_run(data, "fp32", 1, str(tmp_path / ("p" if paired else "n")), 8, top1, paired)
    plain, paired = fp32_run(()), fp32_run(("tf32", "bf16", fisher_precision.TF32_DENSE, "bf16x3"))
    assert paired["final_class_il"] == plain["final_class_il"] and not plain["paired"]
    assert all(torch.equal(a, b) for a, b in zip(paired["fishers"], plain["fishers"]))
    assert len(paired["fishers"]) == 1  # the last task's checkpoint keeps no Fisher sums
    rows = paired["paired"]
    assert [(r["task"], r["classes"], r["images"]) for r in rows] == [(1, 2, 12), (2, 4, 12)]
    for r in rows:
        assert r["run_check"] < 1e-6
        assert 1e-6 < r["errors"]["tf32"]["exact"] < 1e-2 and 1e-6 < r["errors"]["tf32"]["top1"] < 1e-2
        assert r["errors"]["bf16"]["exact"] > 10 * r["errors"]["tf32"]["exact"]  # 8 mantissa bits against 11
        assert r["errors"]["tf32_dense"] == r["errors"]["tf32"]  # the ViT has no grouped convolution
        for e in ("exact", "top1"):  # the split: about 2^-17 per product against TF32's 2^-11
            assert 0 < r["errors"]["bf16x3"][e] < r["errors"]["tf32"][e] / 10
        assert set(r["seconds"]) == {f"{e}_{p}" for e in ("exact", "top1")
                                     for p in ("fp32", "tf32", "bf16", "tf32_dense", "bf16x3")}


def test_split_fisher_variants_pair_with_the_bf16x3_passes(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    out = tmp_path / "x3.json"
    assert fisher_precision.main(["--data", data, "--seeds", "0", "--img_size", "8", "--variants", "bf16x3",
                                  "x3tf32", "--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert list(s) == ["fp32", "bf16x3", "x3tf32"]
    fp32_run = next(r for r in res["runs"] if r["variant"] == "fp32")
    assert set(fp32_run["paired"][0]["errors"]) == {"bf16x3"}  # one paired precision serves both variants
    worst = max(max(row["errors"]["bf16x3"].values()) for row in fp32_run["paired"])
    assert s["bf16x3"]["fisher_rel_err"] == s["x3tf32"]["fisher_rel_err"] == worst and 0 < worst < 1e-4
    assert [r["tf32_emulated"] for r in res["runs"]] == [False, False, True]  # x3tf32 trains in (emulated) TF32


def test_fisher_error_is_the_frobenius_error_over_all_layers():
    g = torch.Generator().manual_seed(0)
    exact = {"a": torch.rand(3, 4, generator=g), "b": torch.rand(5, generator=g)}
    approx = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in exact.items()}
    flat = lambda d: torch.cat([d[k].double().flatten() for k in sorted(d)])  # noqa: E731
    want = float((flat(approx) - flat(exact)).norm() / flat(exact).norm())
    assert fisher_precision.fisher_error(approx, exact) == pytest.approx(want, rel=1e-12)
    assert fisher_precision.fisher_error(exact, exact) == 0.0
    with pytest.raises(RuntimeError, match="different layers"):
        fisher_precision.fisher_error({"a": exact["a"]}, exact)


def test_subsample_keeps_the_first_images_of_each_class(tmp_path):
    rng = np.random.RandomState(0)
    y_train, y_test = rng.randint(0, 3, 40), rng.randint(0, 3, 20)
    src = str(tmp_path / "src.npz")
    np.savez(src, x_train=np.arange(40, dtype=np.uint8)[:, None, None, None].repeat(2, 2), y_train=y_train,
             coarse_train=y_train * 10, x_test=np.zeros((20, 1, 2, 1), np.uint8), y_test=y_test,
             class_names=np.array(["a", "b", "c"]))
    dst = fisher_precision.subsample_npz(src, str(tmp_path / "dst.npz"), 4, None)
    with np.load(dst) as out:
        want = np.sort(np.concatenate([np.flatnonzero(y_train == c)[:4] for c in range(3)]))
        assert out["x_train"][:, 0, 0, 0].tolist() == want.tolist()  # image i has value i: the first 4 a class
        assert out["y_train"].tolist() == y_train[want].tolist()
        assert out["coarse_train"].tolist() == (y_train[want] * 10).tolist()
        assert out["y_test"].tolist() == y_test.tolist() and out["class_names"].tolist() == ["a", "b", "c"]


def test_rule_bounds_the_fisher_error_and_the_worst_dataset_change():
    def row(err, worst):
        return {"fisher_rel_err": err, "worst_class_il_change": worst}
    assert fisher_precision.passes("tf32", row(5e-3, -0.4))
    assert not fisher_precision.passes("tf32", row(2e-2, 0.3))  # Fisher too far off
    assert not fisher_precision.passes("tf32", row(1e-3, -0.6))  # one dataset loses 0.6 points on average
    assert fisher_precision.passes("O2", row(0.3, -0.2))  # -O 2 leaves the Fisher in fp32: only accuracy counts
    assert not fisher_precision.passes("O2", row(0.0, -0.51))
