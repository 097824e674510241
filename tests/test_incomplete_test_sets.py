"""Test sets without images of some classes or tasks: refused before training with the classes named, or
accepted with ``--allow_incomplete_test_set 1`` (accuracy over the classes that have test images, a task
without any is null); the results JSON, the printed table, the report and the metrics never hold NaN."""
from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest

from app.report import build_report
from app.runner import main
from tests.bad_inputs import run_expecting_error
from tests.fuzz_cases import run_args, write_npz
from utils import metrics
from tests.conftest import read_file


def no_nan(text: str) -> dict:
    """``text`` parsed as strict JSON: NaN or an infinity raises."""
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the results JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("test_classes, named", [([0, 1, 3], "class 2"), ([0, 1], "task 2 of 2")])
def test_refused_before_training_naming_what_lacks_test_images(tmp_path, capsys, test_classes, named):
    data = write_npz(random.Random(0), tmp_path / "d.npz", 4, test_classes=test_classes)
    line = run_expecting_error(capsys, run_args(tmp_path, data, "--n_tasks", "2"), tmp_path)
    assert named in line and "--allow_incomplete_test_set 1" in line, line
    assert "Accuracy after task" not in capsys.readouterr().out  # refused before any training


def test_validation_without_held_out_images_names_the_classes(tmp_path, capsys):
    data = write_npz(random.Random(1), tmp_path / "d.npz", 4, train_per_class=[3, 1, 3, 1])
    line = run_expecting_error(capsys, run_args(tmp_path, data, "--n_tasks", "2", "--validation", "20"), tmp_path)
    assert "--validation 20 holds out no images of classes 1, 3" in line, line


def test_accepted_task_without_test_images_is_null_and_stated(tmp_path, capsys):
    data = write_npz(random.Random(2), tmp_path / "d.npz", 4, test_classes=[0, 1])
    argv = run_args(tmp_path, data, "--n_tasks", "2", "--allow_incomplete_test_set", "1")
    argv[argv.index("--plots") + 1] = "1"
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nan" not in out.lower() and "n/a" in out
    results_file = tmp_path / "work" / "res" / "r.json"
    results = no_nan(results_file.read_text())
    matrix = results["accuracy_matrix_class_il"]
    assert matrix[1][1] is None and matrix[1][0] is not None and matrix[0][0] is not None
    assert results["final_class_il"] == matrix[1][0]  # the mean over the tasks that have test images
    assert results["test_set"] == {"complete": False, "classes_without_test_images": [2, 3],
                                   "tasks_without_test_images": [2],
                                   "accuracy_over": "the classes that have test images"}
    assert (tmp_path / "work" / "res" / "r_accuracy_matrix.png").stat().st_size > 0

    report = build_report([str(results_file)], str(tmp_path / "report"))
    for kind in ("markdown", "csv"):
        assert "nan" not in read_file(report[kind]).lower()
    row = next(csv.DictReader(read_file(report["csv"]).splitlines()))
    assert float(row["final_class_il_mean"]) == pytest.approx(results["final_class_il"])


def test_accepted_missing_class_keeps_every_task_and_says_so(tmp_path, capsys):
    data = write_npz(random.Random(3), tmp_path / "d.npz", 4, test_classes=[0, 1, 2])
    assert main(run_args(tmp_path, data, "--n_tasks", "2", "--allow_incomplete_test_set")) == 0
    results = no_nan((tmp_path / "work" / "res" / "r.json").read_text())
    assert all(v is not None for row in results["accuracy_matrix_class_il"] for v in row)
    assert results["test_set"]["classes_without_test_images"] == [3]
    assert results["test_set"]["tasks_without_test_images"] == []


def test_an_empty_test_set_is_refused_even_when_accepted(tmp_path, capsys):
    data = write_npz(random.Random(4), tmp_path / "d.npz", 4, test_classes=[])
    line = run_expecting_error(capsys, run_args(tmp_path, data, "--n_tasks", "2", "--allow_incomplete_test_set",
                                                "1"), tmp_path)
    assert "no images at all" in line


def test_metrics_skip_missing_entries_and_are_none_not_nan():
    R = [[80.0], [60.0, None], [50.0, None, 90.0]]
    assert metrics.average_accuracy(R[1]) == 60.0
    assert metrics.final_average_accuracy(R) == 70.0
    assert metrics.forgetting(R) == 30.0  # task 1: 80 -> 50; task 2 has no value
    assert metrics.backward_transfer(R) == -30.0
    assert metrics.average_accuracy([None, None]) is None and metrics.average_accuracy([]) is None
    assert metrics.forgetting([[None], [None, 10.0]]) is None
    assert metrics.percent(None, 6) == "   n/a" and metrics.percent(12.345) == "12.35"


def test_report_treats_missing_and_non_finite_values_as_missing(tmp_path):
    runs = [{"final_class_il": 40.0, "curve": [None, 40.0]}, {"final_class_il": float("nan"), "curve": [70.0, 50.0]}]
    for seed, run in enumerate(runs):
        result = {"args": {"model": "sgd", "dataset": "seq-custom", "seed": seed}, "complete": True,
                  "accuracy_matrix_class_il": [[1.0]], "final_class_il": run["final_class_il"],
                  "final_task_il": None, "forgetting": None, "average_class_il_per_task": run["curve"],
                  "timings": {"total_seconds": 1.0}}
        (tmp_path / f"r{seed}.json").write_text(json.dumps(result))  # the second holds NaN, as older files may
    report = build_report([str(tmp_path)], str(tmp_path / "out"))
    markdown, table = read_file(report["markdown"]), read_file(report["csv"])
    assert "nan" not in markdown.lower() and "nan" not in table.lower()
    row = next(csv.DictReader(read_file(report["csv"]).splitlines()))
    assert float(row["final_class_il_mean"]) == 40.0 and row["final_task_il_mean"] == ""
    assert "| – |" in markdown
    assert np.isfinite(float(row["final_class_il_std"]))


def test_tracker_scalars_leave_out_tasks_without_test_images():
    from utils.loggers import task_scalars
    scalars = task_scalars([[80.0], [60.0, None]], [[90.0], [70.0, None]], 1)
    assert scalars == {"RESULT_class_mean_accs": 60.0, "RESULT_task_mean_accs": 70.0, "RESULT_class_acc_0": 60.0,
                       "RESULT_task_acc_0": 70.0}
