"""benchmarks/fisher_precision.py on tiny data: fp32, TF32 (emulated on the CPU) and -O 2 on two datasets, the
Fisher errors from the runs' checkpoints, the paired class-IL changes and the rule of docs/speed.md."""
import json

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
    # TF32 emulated: the Fisher moves by about TF32's rounding (2^-11 relative per operand), not more
    assert 1e-6 < s["tf32"]["fisher_rel_err"] < 1e-2
    assert all(r["tf32_emulated"] for r in res["runs"] if r["variant"] == "tf32")
    for v in ("tf32", "O2"):
        for d in s[v]["datasets"].values():
            assert len(d["class_il_change"]) == 1
    for data_name, d in s["O2"]["datasets"].items():
        assert d["class_il_change"][0] == d["class_il"][0] - s["fp32"]["datasets"][data_name]["class_il"][0]
    assert res["passes"] == {v: fisher_precision.passes(v, s[v]) for v in s}
    assert "tf32 passes" in capsys.readouterr().out or not res["passes"]["tf32"]


def test_rule_bounds_the_fisher_error_and_the_worst_dataset_change():
    def row(err, worst):
        return {"fisher_rel_err": err, "worst_class_il_change": worst}
    assert fisher_precision.passes("tf32", row(5e-3, -0.4))
    assert not fisher_precision.passes("tf32", row(2e-2, 0.3))  # Fisher too far off
    assert not fisher_precision.passes("tf32", row(1e-3, -0.6))  # one dataset loses 0.6 points on average
    assert fisher_precision.passes("O2", row(0.3, -0.2))  # -O 2 leaves the Fisher in fp32: only accuracy counts
    assert not fisher_precision.passes("O2", row(0.0, -0.51))
