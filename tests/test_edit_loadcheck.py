"""``main.py --loadcheck`` of a checkpoint written by ``python -m app.edit --save`` evaluates the edited model on the
test data again (the checkpoint's record is the training's, so reporting it would show the unedited model)."""
import json
import re

import pytest

from app import edit
from app.runner import main, run
from tests.conftest import read_file
from tests.test_second_order_model import argv_for
from utils import checkpoints


def printed_means(text: str) -> dict[str, tuple[float, float]]:
    """``{"target": (full, edited), "control": (full, edited)}`` from app.edit's printed table."""
    found = re.findall(r"^(target|control) class-IL mean: full ([\d.]+) -> edited ([\d.]+)$", text, re.M)
    return {name: (float(full), float(edited)) for name, full, edited in found}


def test_loadcheck_of_an_edited_checkpoint_reevaluates_the_edited_model(tmp_path, capsys):
    argv = [*argv_for(tmp_path, "--alpha_ita", "1", n_classes=6, n_tasks=3), "--plots", "0"]
    trained = run([*argv, "--savecheck", "last", "--ckpt_name", "ed", "--results_file", str(tmp_path / "r.json")])
    ckpt, saved = str(tmp_path / "ckpt" / "ed" / "task_3.pt"), str(tmp_path / "edited.pt")
    capsys.readouterr()
    assert edit.main(["--checkpoint", ckpt, "--drop", "2", "--save", saved]) == 0
    means = printed_means(capsys.readouterr().out)
    assert set(means) == {"target", "control"}
    unedited = trained["accuracy_matrix_class_il"][-1]
    assert means["target"][0] == pytest.approx(unedited[2], abs=0.005)
    # the edit changes the dropped task and the others: the test could not tell the two models apart otherwise
    assert abs(means["target"][1] - means["target"][0]) > 1 and abs(means["control"][1] - means["control"][0]) > 1
    state = checkpoints.load_run_checkpoint(saved)
    assert state["record"]["accuracy_matrix_class_il"][-1] == unedited  # the stored record is the unedited model's

    results_file = tmp_path / "loaded.json"
    loaded = run([*argv, "--loadcheck", saved, "--results_file", str(results_file)])
    out = capsys.readouterr().out
    row = loaded["accuracy_matrix_class_il"][-1]
    assert row[2] == pytest.approx(means["target"][1], abs=0.005)  # app.edit's printed target, edited
    assert (row[0] + row[1]) / 2 == pytest.approx(means["control"][1], abs=0.005)  # and control
    assert row[2] != pytest.approx(unedited[2], abs=1) and row != unedited
    assert row == pytest.approx(state["edit"]["edited_class_il"], abs=1e-9)
    assert loaded["accuracy_matrix_task_il"][-1] == pytest.approx(state["edit"]["edited_task_il"], abs=1e-9)
    assert loaded["final_class_il"] == pytest.approx(sum(row) / 3, abs=1e-9)
    assert loaded["final_class_il"] != pytest.approx(trained["final_class_il"], abs=0.5)
    assert loaded["accuracy_matrix_class_il"][:-1] == trained["accuracy_matrix_class_il"][:-1]  # earlier rows kept
    assert json.loads(read_file(results_file))["accuracy_matrix_class_il"][-1] == pytest.approx(row, abs=1e-9)
    assert f"edited checkpoint (drop task(s) 2), evaluated on the test data: class-IL per task " \
           f"{' '.join(f'{a:.2f}' for a in row)}" in out
    assert f"final class-IL {loaded['final_class_il']:.2f}" in out

    # an unedited checkpoint is still reported from its record, without a new evaluation line
    assert main([*argv, "--loadcheck", ckpt, "--results_file", str(tmp_path / "plain.json")]) == 0
    assert "edited checkpoint" not in capsys.readouterr().out
    plain = json.loads(read_file(tmp_path / "plain.json"))
    assert plain["accuracy_matrix_class_il"][-1] == unedited
