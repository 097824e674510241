"""benchmarks/fisher_accuracy.py on tiny data: per seed, one exact-Fisher and one sampled-Fisher run of the same
settings (checked on the runs' own result files), and a summary of exactly those runs."""
import json
import statistics

from benchmarks import fisher_accuracy
from tests.conftest import make_npz


def test_exact_and_sampled_runs_per_seed_and_their_summary(tmp_path, capsys, monkeypatch):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    out, work = tmp_path / "fa.json", tmp_path / "work"
    monkeypatch.setattr(fisher_accuracy.tempfile, "mkdtemp", lambda prefix="": str(work))
    assert fisher_accuracy.main(["--data", data, "--seeds", "0", "1", "--n_tasks", "2", "--img_size", "8",
                                 "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2",
                                 "--sampled_labels", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    for r in res["runs"]:  # each figure is that of a run with the claimed estimator and seed, else equal settings
        exact = json.loads((work / f"exact_s{r['seed']}.json").read_text())
        approx = json.loads((work / f"fisher_sampled_labels_2_s{r['seed']}.json").read_text())
        assert (exact["args"]["fisher_sampled_labels"], approx["args"]["fisher_sampled_labels"]) == (None, 2)
        assert exact["args"]["seed"] == approx["args"]["seed"] == r["seed"]
        assert (r["exact"], r["approx"]) == (exact["final_class_il"], approx["final_class_il"])
        differing = {k for k in exact["args"] if exact["args"][k] != approx["args"].get(k)}
        assert differing == {"fisher_sampled_labels", "results_file"}
        assert exact["args"]["model"] == "ita" and exact["args"]["alpha_ita"] == 1.0
        assert 0 <= r["exact"] <= 100 and 0 <= r["approx"] <= 100
        assert r["diff"] == r["approx"] - r["exact"] and r["exact_s"] > 0 and r["approx_s"] > 0
    assert res["mean_diff"] == statistics.mean(r["diff"] for r in res["runs"])
    assert res["mean_exact"] == statistics.mean(r["exact"] for r in res["runs"])
    assert "mean: exact" in capsys.readouterr().out
