"""benchmarks/fisher_accuracy.py on tiny data: one exact and one sampled-Fisher run per seed, honest summary."""
import json
import statistics

from benchmarks import fisher_accuracy
from tests.conftest import make_npz


def test_exact_and_sampled_runs_per_seed_and_their_summary(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    out = tmp_path / "fa.json"
    assert fisher_accuracy.main(["--data", data, "--seeds", "0", "1", "--n_tasks", "2", "--img_size", "8",
                                 "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2",
                                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    for r in res["runs"]:
        assert 0 <= r["exact"] <= 100 and 0 <= r["approx"] <= 100
        assert r["diff"] == r["approx"] - r["exact"] and r["exact_s"] > 0 and r["approx_s"] > 0
    assert res["mean_diff"] == statistics.mean(r["diff"] for r in res["runs"])
    assert res["mean_exact"] == statistics.mean(r["exact"] for r in res["runs"])
    assert "mean: exact" in capsys.readouterr().out
