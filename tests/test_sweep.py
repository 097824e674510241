"""``python -m benchmarks.sweep``: grid parsing, validation-based selection, resume, one real tiny sweep."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks import sweep as sweep_mod
from tests.conftest import tiny_run_args
from tests.conftest import read_file


def flag_value(argv: list[str], flag: str):
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.fixture
def fake_run(monkeypatch):
    """A fake ``app.runner.run``: validation accuracy grows with --alpha_ita, test accuracy falls with it."""
    calls: list[list[str]] = []

    def run(argv):
        calls.append(list(argv))
        alpha, weight = float(flag_value(argv, "--alpha_ita")), float(flag_value(argv, "--req_weight_cls"))
        on_validation = "--validation" in argv
        score = (10 * alpha + weight) if on_validation else (90 - 10 * alpha - weight)
        res = {"final_class_il": score, "final_task_il": score + 1, "complete": True,
               "validation": flag_value(argv, "--validation")}
        path = flag_value(argv, "--results_file")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(res, fh)
        return res

    import app.runner
    monkeypatch.setattr(app.runner, "run", run)
    return calls


def test_selection_uses_validation_not_test_and_resume_skips_finished(fake_run, tmp_path, capsys):
    out = str(tmp_path / "sweep")
    argv = ["--model", "ita", "--grid", "alpha_ita=0.1,1,2;req_weight_cls=0.01,0.1", "--out", out,
            "--validation", "20", "--", "--dataset", "seq-custom", "--lr", "0.001", "--alpha_ita", "5"]
    assert sweep_mod.main(argv) == 0
    validation_calls = [c for c in fake_run if "--validation" in c]
    test_calls = [c for c in fake_run if "--validation" not in c]
    assert len(validation_calls) == 6 and len(test_calls) == 1
    assert all(flag_value(c, "--validation") == "20" for c in validation_calls)
    # the grid overrides a shared flag; the shared flags reach every run
    assert sorted(flag_value(c, "--alpha_ita") for c in validation_calls) == ["0.1", "0.1", "1", "1", "2", "2"]
    assert all(flag_value(c, "--lr") == "0.001" and c.count("--alpha_ita") == 1 for c in fake_run)
    # best on validation is alpha 2 / weight 0.1 (test would pick alpha 0.1 / weight 0.01)
    assert flag_value(test_calls[0], "--alpha_ita") == "2"
    assert flag_value(test_calls[0], "--req_weight_cls") == "0.1"
    summary = json.loads(read_file(os.path.join(out, "sweep.json")))
    assert summary["chosen"] == {"alpha_ita": "2", "req_weight_cls": "0.1"}
    assert summary["test_class_il"] == pytest.approx(90 - 20 - 0.1)
    assert {r["label"]: r["validation_class_il"] for r in summary["rows"]}["alpha_ita=1,req_weight_cls=0.01"] \
        == pytest.approx(10.01)
    md = read_file(os.path.join(out, "sweep.md"))
    assert "| alpha_ita=2,req_weight_cls=0.1 | 20.10 | 21.10 | yes |" in md and "class-IL 69.90" in md
    # resume: an interrupted sweep (one validation result lost, one half-written) reruns only those
    os.remove(os.path.join(out, "validation", "alpha_ita=1,req_weight_cls=0.1.json"))
    with open(os.path.join(out, "validation", "alpha_ita=0.1,req_weight_cls=0.1.json"), "w") as fh:
        fh.write('{"final_class_il": 1.0, "complete": false}')
    fake_run.clear()
    assert sweep_mod.main(argv) == 0
    assert sorted(flag_value(c, "--alpha_ita") + "/" + flag_value(c, "--req_weight_cls") for c in fake_run) \
        == ["0.1/0.1", "1/0.1"]
    fake_run.clear()
    assert sweep_mod.main([*argv[:6], "--reuse", "0", *argv[6:]]) == 0
    assert len(fake_run) == 7


@pytest.mark.parametrize("grid", ["alpha_ita", "alpha_ita=", "alpha_ita=1,,2", "=1,2", "a=1;a=2", "a=1,1",
                                  "a=1 2", ";", "a=$(rm)"])
def test_bad_grid_is_one_line_error(grid, fake_run, tmp_path, capsys):
    assert sweep_mod.main(["--model", "ita", "--grid", grid, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --grid") and "\n" not in err
    assert not fake_run and not os.path.exists(tmp_path / "o")


def test_flags_owned_by_the_sweep_are_refused(fake_run, tmp_path, capsys):
    argv = ["--model", "ita", "--grid", "alpha_ita=1", "--out", str(tmp_path / "o"), "--", "--validation", "5"]
    assert sweep_mod.main(argv) == 2
    assert "--validation is set by the sweep" in capsys.readouterr().err
    assert not fake_run


def test_real_tiny_sweep_holds_out_validation(tiny_npz, tmp_path):
    """Two sgd settings on tiny data: validation runs evaluate on held-out training images, the test run on test."""
    out = str(tmp_path / "sweep")
    shared = [a for a in tiny_run_args(tiny_npz, tmp_path) if a not in ("--non_verbose",)]
    lr_at = shared.index("--lr")
    del shared[lr_at:lr_at + 2]
    assert sweep_mod.main(["--model", "sgd", "--grid", "lr=0.05,0.0001", "--validation", "50", "--out", out,
                           "--", *shared]) == 0
    summary = json.loads(read_file(os.path.join(out, "sweep.json")))
    assert len(summary["rows"]) == 2 and all("validation_class_il" in r for r in summary["rows"])
    best = max(summary["rows"], key=lambda r: r["validation_class_il"])
    assert summary["chosen_label"] == best["label"]
    val = json.loads(read_file(summary["rows"][0]["validation_file"]))
    test = json.loads(read_file(summary["test_file"]))
    assert val["args"]["validation"] == 50 and test["args"].get("validation") is None
    assert test["final_class_il"] == pytest.approx(summary["test_class_il"])
