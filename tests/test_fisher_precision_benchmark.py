"""benchmarks/fisher_precision.py on tiny data: one seed, fp32/tf32/bf16, the Fisher errors from the runs'
checkpoints, and the rule's verdict."""
import json

from benchmarks import fisher_precision
from tests.conftest import make_npz

TINY = ["--n_tasks", "2", "--img_size", "8", "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1",
        "--num_heads", "2", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8"]


def test_precisions_of_one_seed_and_the_verdict(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    out = tmp_path / "fp.json"
    assert fisher_precision.main(["--data", data, "--seeds", "0", "--img_size", "8", "--out", str(out), *TINY]) == 0
    res = json.loads(out.read_text())
    s = res["summary"]
    assert list(s) == ["fp32", "tf32", "bf16"] and res["device"] == "cpu"
    assert s["fp32"]["fisher_rel_err"] == 0.0
    assert s["tf32"]["fisher_rel_err"] == 0.0 and s["tf32"]["class_il"] == s["fp32"]["class_il"]  # no TF32 on a CPU
    assert 1e-5 < s["bf16"]["fisher_rel_err"] < 5e-2  # task 1's Fisher compared: bf16 GEMMs, not bit-equal
    assert all(v["fisher_seconds_mean"] > 0 for v in s.values())
    best, eligible = fisher_precision.verdict(s)
    assert res["fastest_eligible"] == best and res["eligible"] == eligible and "fp32" in eligible
    assert "fastest eligible" in capsys.readouterr().out


def test_verdict_is_the_fastest_within_both_bounds():
    def row(err, cil, secs):
        return {"fisher_rel_err": err, "class_il_mean": cil, "fisher_seconds_mean": secs}
    summary = {"fp32": row(0.0, 50.0, 10.0), "tf32": row(2e-3, 49.9, 6.0), "bf16": row(5e-3, 49.7, 3.0)}
    assert fisher_precision.verdict(summary) == ("tf32", ["fp32", "tf32"])  # bf16 loses 0.3 points
    summary["bf16"] = row(2e-2, 50.0, 3.0)
    assert fisher_precision.verdict(summary)[0] == "tf32"  # bf16's Fisher too far off
    summary["bf16"] = row(5e-3, 50.1, 3.0)
    assert fisher_precision.verdict(summary) == ("bf16", ["fp32", "tf32", "bf16"])
