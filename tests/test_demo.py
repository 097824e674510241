"""``make demo`` (app/demo.py): progress per method and task, both final accuracies beside the paper's, a one-line
reading, and an output that ends with the paths of its plot and JSON."""
import json
import re

from app.demo import main, paper_accuracy, reading
from tests.conftest import make_npz


def test_reading_compares_what_each_method_keeps_of_the_earlier_tasks():
    sgd = {"final_class_il": 5.0, "accuracy_matrix_class_il": [[40.0], [0.0, 10.0], [1.0, 2.0, 12.0]]}
    ita = {"final_class_il": 35.0, "accuracy_matrix_class_il": [[80.0], [60.0, 50.0], [30.0, None, 45.0]]}
    line = reading(sgd, ita)
    assert line.startswith("After the last task ITA still gets 30.0 % of the earlier tasks' test images right, "
                           "fine-tuning 1.5 %")  # the last task is excluded; a missing entry (None) is skipped
    assert "final class-IL 35.0 % against 5.0 % (+30.0 points)" in line
    assert paper_accuracy("ITA-LoRA") == 89.96 and paper_accuracy("Finetune") == 21.57


def test_demo_smoke_run_shows_progress_and_ends_with_its_files(tmp_path, capsys):
    """The two runs side by side (the default), each line marked with its method; then the same runs one after the
    other (--jobs 1, unmarked lines) give the same numbers."""
    data = make_npz(str(tmp_path / "d.npz"), n_classes=10, per_class=4, size=16)
    out = tmp_path / "out"
    assert main(["--data", data, "--img_size", "32", "--debug_mode", "1", "--out", str(out), "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"plot: {out / 'demo.png'}", f"results: {out / 'demo.json'}"]
    assert (out / "demo.png").stat().st_size > 0
    summary = json.loads((out / "demo.json").read_text())
    assert list(summary) == ["fine-tuning (sgd)", "ITA (second_order)"]
    assert all(len(s["average_class_il_per_task"]) == 10 for s in summary.values())
    assert all(0 < s["cpu_seconds"] < 3600 for s in summary.values())  # each run's own user + system time
    text = "\n".join(lines)
    assert "=== [1/2] fine-tuning (sgd)" in text and "=== [2/2] ITA (second_order)" in text
    assert "=== side by side: 2 processes, 1 thread(s) each ===" in text
    progress = [line for line in lines if "after task 10:" in line]
    assert sorted(line.split()[0] for line in progress) == ["[ITA]", "[sgd]"]  # each run's, marked
    assert any(line.startswith("After the last task ITA still gets ") for line in lines)
    assert "89.96" in text and "21.57" in text  # the paper's numbers beside ours
    table = lines[lines.index(next(line for line in lines if line.strip().startswith("method"))) + 1:][:2]
    assert [row.split()[-2] for row in table] == [f"{s['cpu_seconds']:.0f}" for s in summary.values()]

    seq = tmp_path / "seq"
    assert main(["--data", data, "--img_size", "32", "--debug_mode", "1", "--out", str(seq), "--jobs", "1",
                 "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "after task 10:" in "\n".join(lines) and not any(line.startswith("[sgd]") for line in lines)
    sequential = json.loads((seq / "demo.json").read_text())
    for label, res in summary.items():
        for key in ("final_class_il", "final_task_il", "forgetting", "average_class_il_per_task"):
            assert sequential[label][key] == res[key], (label, key)


def test_demo_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    few = make_npz(str(tmp_path / "few.npz"), n_classes=4, per_class=4, size=16)  # 10 tasks need 10 classes
    assert main(["--data", few, "--img_size", "32", "--debug_mode", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    failed = r"error: the (fine-tuning \(sgd\)|ITA \(second_order\)) run failed \(exit code 2\): --n_tasks 10 exceeds"
    assert len(err) == 1 and re.match(failed, err[0]), err  # the first run that fails, with its own message
    assert main(["--data", few, "--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --jobs and --threads take a positive number, not 0"


def test_runs_get_their_threads(monkeypatch):
    from app.demo import run_env
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the run's thread count wins
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "123")  # the user's own malloc settings reach the run
    env = run_env(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["PYTHONUNBUFFERED"] == "1"
    assert env["MALLOC_TRIM_THRESHOLD_"] == "123"
