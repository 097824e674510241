"""benchmarks.editing: the specialization/unlearning protocol end to end on tiny data."""
from __future__ import annotations

import csv
import json
import os

import pytest

from benchmarks.editing import editing, edits
from tests.conftest import make_npz
from utils.errors import UserError
from tests.conftest import read_file


def test_methods_may_carry_labels():
    from benchmarks.editing import parse_methods

    assert parse_methods("ita, free=ita,tmc") == {"ita": "ita", "free": "ita", "tmc": "tmc"}
    with pytest.raises(UserError, match="'sgd' cannot be edited"):
        parse_methods("mine=sgd")


def test_edits_cover_the_protocol():
    names = [e[0] for e in edits(4)]
    assert names[:5] == ["keep all", "keep first (0)", "keep middle (2)", "keep last (3)", "keep 0,2,3"]
    assert [e for e in edits(4) if e[1] == "unlearn"][1] == ("drop 1", "unlearn", [1], [0, 2, 3])
    assert [e[3] for e in edits(4) if e[1] == "specialize-single"] == [[0], [1], [2], [3]]
    assert edits(4)[-1] == ("theta0 (all dropped)", "theta0", [0, 1, 2, 3], [])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """ITA and TMC trained on 3 tiny tasks and edited once: (out folder, argv, output paths)."""
    tmp_path = tmp_path_factory.mktemp("editing")
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6)
    out = tmp_path / "edit"
    shared = ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", "3", "--backbone", "vit_tiny",
              "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1",
              "--batch_size", "4", "--seed", "0", "--plots", "0", "--base_path", str(tmp_path / "data")]
    fast = ("--num_epochs_pretuning 1 --num_epochs_align_pretuning 1 --num_samples_align_pretuning 8 "
            "--batch_size_align_pretuning 8 --alpha_ita 1")
    argv = ["--methods", "ita,tmc", "--out", str(out), "--extra", f"ita:{fast}", "--device", "cpu", "--", *shared]
    return out, argv, editing(argv)


def test_editing_runs_trains_edits_and_reuses(trained, capsys):
    out, argv, paths = trained
    rows = list(csv.DictReader(read_file(paths["csv"]).splitlines()))
    assert len(rows) == 2 * len(edits(3))
    for method in ("ita", "tmc"):
        mine = {r["edit"]: r for r in rows if r["method"] == method}
        result = json.loads(read_file(out / "results" / f"{method}.json"))
        full_targets = float(mine["theta0 (all dropped)"]["target_before"])  # every task, full composition
        assert full_targets == pytest.approx(result["final_class_il"], abs=1e-6)
        keep_all = mine["keep all"]  # uniform weights are the full composition
        assert float(keep_all["target_after"]) == pytest.approx(float(keep_all["target_before"]), abs=1e-6)
        for t in range(3):  # the controls of 'drop t' are the other tasks, evaluated with the same full model
            drop = mine[f"drop {t}"]
            assert drop["targets"] == str(t)
    markdown = read_file(paths["markdown"])
    assert "| tmc | drop one task (mean over tasks) |" in markdown and "| ita | theta0 (all dropped) |" in markdown
    capsys.readouterr()
    before = read_file(paths["csv"])
    editing(argv)  # checkpoints and finished edits are reused: nothing is trained or evaluated again
    log = capsys.readouterr().out
    assert "python main.py" not in log and "passes over the test set" not in log
    assert read_file(paths["csv"]) == before
    os.utime(out / "records" / "tmc.json", (0, 0))  # older than its checkpoint: the edits of tmc are redone
    editing(argv)
    log = capsys.readouterr().out
    assert log.count("passes over the test set") == 1 and "tmc: editing" in log
    assert read_file(paths["csv"]) == before
    with pytest.raises(UserError, match="'sgd' cannot be edited"):
        editing(["--methods", "sgd"])


def test_protocol_matches_direct_evaluation_with_fewer_passes(trained, capsys):
    """The cached protocol (one pass per distinct composition; TMC from per-task tangent features) gives the
    accuracies of evaluating every edit directly through the model, as the protocol did before."""
    import torch

    from app.edit import load_model
    from benchmarks.editing import cached_loaders, last_checkpoint, run_protocol
    from utils.evaluate import evaluate

    out = trained[0]
    for method, passes in (("ita", 8), ("tmc", 1)):  # 3 tasks: full, 3 singles, 3 drops, theta0; TMC: one
        _, dataset, model, _ = load_model(last_checkpoint(str(out / "checkpoints" / method)), "cpu")
        capsys.readouterr()
        records = run_protocol(model, dataset, raw_weights=False)
        assert f"{len(edits(3))} edits, {passes} passes" in capsys.readouterr().out
        for record in records:
            model.eval_task_weights = record["weights"]
            model.compose_eval()
            direct, direct_til = evaluate(model, dataset)
            assert record["per_task_after"] == pytest.approx(direct, abs=1e-9), (method, record["edit"])
            assert record["per_task_til_after"] == pytest.approx(direct_til, abs=1e-9), (method, record["edit"])
        model.eval_task_weights = None
        full, _ = evaluate(model, dataset)
        assert records[0]["per_task_before"] == pytest.approx(full, abs=1e-9)
        if method == "tmc":  # the features are linear in the tangent: base + sum_t w_t J d_t = f + J (sum w_t d_t)
            x = next(iter(dataset.test_loaders[0]))[0]
            base, terms = model.task_feature_terms(x)
            weights = [0.5, 0.0, 0.25]
            composed = model.pool.compose(weights)
            with torch.no_grad():
                expected = model.features_with(x, composed)
            assert torch.allclose(base + sum(w * t for w, t in zip(weights, terms)), expected, atol=1e-5)
            assert not torch.allclose(terms[0], torch.zeros_like(terms[0]))
    assert cached_loaders(dataset.test_loaders, limit=0) == list(dataset.test_loaders)  # too big: streamed
    cached = cached_loaders(dataset.test_loaders)
    assert torch.equal(cached[1][0][0], next(iter(dataset.test_loaders[1]))[0])
