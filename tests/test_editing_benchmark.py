"""benchmarks.editing: the specialization/unlearning protocol end to end on tiny data."""
from __future__ import annotations

import csv
import json

import pytest

from benchmarks.editing import editing, edits
from tests.conftest import make_npz
from utils.errors import UserError


def test_edits_cover_the_protocol():
    names = [e[0] for e in edits(4)]
    assert names[:5] == ["keep all", "keep first (0)", "keep middle (2)", "keep last (3)", "keep 0,2,3"]
    assert [e for e in edits(4) if e[1] == "unlearn"][1] == ("drop 1", "unlearn", [1], [0, 2, 3])
    assert [e[3] for e in edits(4) if e[1] == "specialize-single"] == [[0], [1], [2], [3]]
    assert edits(4)[-1] == ("theta0 (all dropped)", "theta0", [0, 1, 2, 3], [])


def test_editing_runs_trains_edits_and_reuses(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6)
    out = tmp_path / "edit"
    shared = ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", "3", "--backbone", "vit_tiny",
              "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1",
              "--batch_size", "4", "--seed", "0", "--plots", "0", "--base_path", str(tmp_path / "data")]
    fast = ("--num_epochs_pretuning 1 --num_epochs_align_pretuning 1 --num_samples_align_pretuning 8 "
            "--batch_size_align_pretuning 8 --alpha_ita 1")
    argv = ["--methods", "ita,tmc", "--out", str(out), "--extra", f"ita:{fast}", "--device", "cpu", "--", *shared]
    paths = editing(argv)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 2 * len(edits(3))
    for method in ("ita", "tmc"):
        mine = {r["edit"]: r for r in rows if r["method"] == method}
        result = json.load(open(out / "results" / f"{method}.json"))
        full_targets = float(mine["theta0 (all dropped)"]["target_before"])  # every task, full composition
        assert full_targets == pytest.approx(result["final_class_il"], abs=1e-6)
        keep_all = mine["keep all"]  # uniform weights are the full composition
        assert float(keep_all["target_after"]) == pytest.approx(float(keep_all["target_before"]), abs=1e-6)
        for t in range(3):  # the controls of 'drop t' are the other tasks, evaluated with the same full model
            drop = mine[f"drop {t}"]
            assert drop["targets"] == str(t)
    markdown = open(paths["markdown"]).read()
    assert "| tmc | drop one task (mean over tasks) |" in markdown and "| ita | theta0 (all dropped) |" in markdown
    capsys.readouterr()
    editing(argv)  # checkpoints are reused: nothing is trained again
    assert "python main.py" not in capsys.readouterr().out
    with pytest.raises(UserError, match="'sgd' cannot be edited"):
        editing(["--methods", "sgd"])
