"""app.report and utils.plots: files are produced and the report's numbers equal the JSON inputs."""
import csv
import json
import statistics

import pytest

from utils import plots
from utils.errors import UserError
from app.report import build_report, main as report_main
from tests.conftest import read_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_result(model, seed, final_cil, final_til, forgetting, seconds, curve, dataset="seq-custom", lr=0.1,
                complete=True):
    return {"args": {"model": model, "dataset": dataset, "seed": seed, "lr": lr, "results_file": f"/x/{seed}.json"},
            "complete": complete, "accuracy_matrix_class_il": [[c] for c in curve],
            "final_class_il": final_cil, "final_task_il": final_til, "forgetting": forgetting,
            "average_class_il_per_task": curve, "timings": {"total_seconds": seconds}}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def results_dir(tmp_path):
    runs = {"sgd": [(0, 20.0, 60.0, 70.0, 10.0, [90.0, 45.0, 20.0]), (1, 22.5, 61.0, 66.0, 12.0, [88.0, 47.0, 22.5]),
                    (2, 19.0, 58.5, 71.5, 11.0, [91.0, 44.0, 19.0])],
            "joint": [(0, 70.0, 90.0, 0.0, 30.0, [0.0, 0.0, 70.0]), (1, 73.0, 92.0, 0.0, 33.0, [0.0, 0.0, 73.0])]}
    root = tmp_path / "results"
    for model, entries in runs.items():
        for seed, *values in entries:
            write(root / model / f"s{seed}.json", fake_result(model, seed, *values))
    write(root / "sgd" / "partial.json", fake_result("sgd", 9, 1.0, 1.0, 1.0, 1.0, [1.0], complete=False))
    write(root / "other.json", {"not": "a result"})
    return root, runs


def test_report_numbers_equal_the_inputs(results_dir, tmp_path):
    root, runs = results_dir
    paths = build_report([str(root)], str(tmp_path / "out"))
    assert set(paths) == {"markdown", "csv", "png"}
    with open(paths["csv"]) as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"sgd", "joint"}
    for model, entries in runs.items():
        row = rows[model]
        assert int(row["n_runs"]) == len(entries) and row["dataset"] == "seq-custom"
        for col, key in enumerate(("final_class_il", "final_task_il", "forgetting", "wall_clock_seconds")):
            values = [e[col + 1] for e in entries]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
            assert float(row[f"{key}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    md = read_file(paths["markdown"])
    sgd_cil = [e[1] for e in runs["sgd"]]
    assert f"{statistics.mean(sgd_cil):.2f} ± {statistics.stdev(sgd_cil):.2f}" in md
    assert "## seq-custom" in md and "partial.json" in md  # the incomplete run is listed, not averaged
    assert read_file(paths["png"], "rb")[:8] == PNG_MAGIC


def test_runs_with_different_hyperparameters_are_kept_apart(tmp_path):
    a = write(tmp_path / "a.json", fake_result("sgd", 0, 10.0, 50.0, 5.0, 1.0, [10.0], lr=0.1))
    b = write(tmp_path / "b.json", fake_result("sgd", 0, 30.0, 70.0, 5.0, 1.0, [30.0], lr=0.01))
    paths = build_report([a, b], str(tmp_path / "out"))
    with open(paths["csv"]) as fh:
        rows = {r["method"]: float(r["final_class_il_mean"]) for r in csv.DictReader(fh)}
    assert rows == {"sgd (lr=0.1)": 10.0, "sgd (lr=0.01)": 30.0}


def test_report_cli_and_empty_input(results_dir, tmp_path, capsys):
    root, _ = results_dir
    assert report_main([str(root), "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").exists() and "csv:" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: no complete result JSONs")
    with pytest.raises(UserError, match="does not exist"):
        build_report([str(tmp_path / "missing")], str(tmp_path))


def test_plots_write_pngs(tmp_path):
    import matplotlib.image as mpimg
    matrix = [[90.0], [40.0, 80.0], [20.0, 30.0, 85.0]]
    assert plots.square_matrix(matrix)[0][1] != plots.square_matrix(matrix)[0][1]  # NaN padding
    outputs = [plots.plot_accuracy_matrix(matrix, str(tmp_path / "m.png")),
               plots.plot_average_accuracy({"class-IL": [90, 60, 45], "task-IL": [90, 85, 80]}, str(tmp_path / "a.png")),
               plots.plot_edit_table([{"name": "forget 3", "target_before": 91.0, "target_after": 4.0,
                                       "control_before": 88.0, "control_after": 86.5, "note": "x"}],
                                     str(tmp_path / "e.png"))]
    for path in outputs:
        image = mpimg.imread(path)
        assert image.shape[0] > 50 and image.shape[1] > 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    with pytest.raises(ValueError):
        plots.plot_edit_table([{"name": "x"}], str(tmp_path / "bad.png"))
