"""benchmarks.editing continues an interrupted run from its last finished task and ends where an uninterrupted
run ends (the same accuracies and edits)."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks.editing import editing, records_path, run_complete
from tests.conftest import make_npz, read_file
from utils import killpoints


class Killed(Exception):
    pass


def argv_for(tmp_path, out) -> list[str]:
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6)
    shared = ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", "3", "--backbone", "vit_tiny",
              "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1",
              "--batch_size", "4", "--seed", "0", "--plots", "0", "--base_path", str(tmp_path / "data")]
    fast = ("--num_epochs_pretuning 1 --num_epochs_align_pretuning 1 --num_samples_align_pretuning 8 "
            "--batch_size_align_pretuning 8 --alpha_ita 1")
    return ["--methods", "ita", "--out", str(out), "--extra", f"ita:{fast}", "--device", "cpu", "--", *shared]


def test_an_interrupted_run_continues_at_its_next_task(tmp_path, monkeypatch, capsys):
    def die() -> None:
        raise Killed()

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    editing(argv_for(tmp_path, whole))
    monkeypatch.setattr(killpoints, "kill_now", die)
    monkeypatch.setenv(killpoints.ENV_VAR, "begin_task:3")  # dies in the third task, after task 2's checkpoint
    with pytest.raises(Killed):
        editing(argv_for(tmp_path, cut))
    monkeypatch.delenv(killpoints.ENV_VAR)
    results = cut / "results" / "ita.json"
    saved = sorted(os.path.basename(p) for _, _, files in os.walk(cut / "checkpoints") for p in files)
    assert saved == ["task_1.pt", "task_2.pt"] and not run_complete(str(results))
    capsys.readouterr()
    editing(argv_for(tmp_path, cut))
    log = capsys.readouterr()
    assert "python main.py" in log.out and "2 of 3 tasks done" in log.err  # continued, not restarted
    assert run_complete(str(results))
    mine, reference = (json.loads(read_file(d / "results" / "ita.json")) for d in (cut, whole))
    assert mine["accuracy_matrix_class_il"] == reference["accuracy_matrix_class_il"]
    assert mine["accuracy_matrix_task_il"] == reference["accuracy_matrix_task_il"]
    edited, expected = (json.loads(read_file(records_path(str(d), "ita")))["records"] for d in (cut, whole))
    assert [(r["per_task_after"], r["per_task_til_after"]) for r in edited] == \
        [(r["per_task_after"], r["per_task_til_after"]) for r in expected]
    editing(argv_for(tmp_path, cut))  # finished: reused, nothing trained or evaluated again
    log = capsys.readouterr().out
    assert "python main.py" not in log and "passes over the test set" not in log
    results.write_text(json.dumps({"complete": False}))  # an incomplete results file is not a finished run
    assert not run_complete(str(results))
