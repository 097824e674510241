"""SIGKILL at several moments of a run, then ``--resume``: the final metrics and weights equal an uninterrupted run.

The killed run is a real ``python main.py`` subprocess that kills itself (``CL_TEST_KILL_AT``, see
utils/killpoints.py) during training, right after ``begin_task`` (where the second-order model runs
its Fisher pass), mid-evaluation and half-way through writing a checkpoint (the same atomic write
protects the results JSON). Four subprocesses: each costs the framework's import time. The resumed run and the reference run are in-process (same code path as the CLI).
"""
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, make_npz, tiny_run_args
from utils import checkpoints
from app.runner import run

METRIC_KEYS = ("accuracy_matrix_class_il", "accuracy_matrix_task_il", "final_class_il", "final_task_il",
               "forgetting", "bwt", "average_class_il_per_task")


def run_args(data: str, folder) -> list[str]:
    return ["--model", "sgd", *tiny_run_args(data, folder, n_tasks=3), "--savecheck", "task", "--plots", "0",
            "--results_file", str(folder / "res" / "r.json")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run: its results and its final checkpoint (model weights)."""
    folder = tmp_path_factory.mktemp("reference")
    data = make_npz(str(folder / "d.npz"), n_classes=6, per_class=6)
    results = run(run_args(data, folder))
    run_dir = folder / "ckpt" / os.listdir(folder / "ckpt")[0]
    return data, results, checkpoints.load_checkpoint(str(run_dir / "task_3.pt"))


def task_files(folder) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def assert_same_run(results, final_state, reference_results, reference_state) -> None:
    for key in METRIC_KEYS:
        assert results[key] == reference_results[key], key
    weights, expected = final_state["model_state"]["model"], reference_state["model_state"]["model"]
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.equal(weights[name], expected[name]), name


@pytest.mark.parametrize("point, on_disk", [
    ("train:2:1:2", ["task_1.pt"]),                # inside training task 2 (after its 2nd step)
    ("begin_task:3", ["task_1.pt", "task_2.pt"]),  # right after begin_task (the Fisher pass) of task 3
    ("eval:2", ["task_1.pt"]),                     # in the middle of the evaluation after task 2
    ("write:task_3.pt", ["task_1.pt", "task_2.pt"]),  # half of the last checkpoint written
])
def test_sigkill_then_resume_equals_uninterrupted(point, on_disk, reference, tmp_path):
    data, reference_results, reference_state = reference
    args = run_args(data, tmp_path)
    env = {**os.environ, "CL_TEST_KILL_AT": point, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "res" / "r.json").exists()
    run_dirs = task_files(tmp_path / "ckpt")
    run_dir = tmp_path / "ckpt" / (run_dirs[0] if run_dirs else "none")
    assert [f for f in task_files(run_dir) if not f.startswith(".tmp-")] == on_disk
    if point.startswith("write:"):  # the killed write left its half-written temporary file, never a partial target
        leftovers = [f for f in task_files(run_dir) + task_files(tmp_path / "res") if f.startswith(".tmp-")]
        assert leftovers and all(f.endswith(point.split(":", 1)[1]) for f in leftovers)

    resumed = run([*args, "--resume"])
    run_dir = tmp_path / "ckpt" / task_files(tmp_path / "ckpt")[0]
    assert_same_run(resumed, checkpoints.load_checkpoint(str(run_dir / "task_3.pt")), reference_results,
                    reference_state)
    assert resumed["complete"] and os.path.exists(tmp_path / "res" / "r.json")
    assert not list((tmp_path / "res").glob("*.png"))  # --plots 0
    assert not [f for f in task_files(run_dir) + task_files(tmp_path / "res") if f.startswith(".tmp-")]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path, capsys):
    data, reference_results, reference_state = reference
    args = run_args(data, tmp_path)
    run([*args, "--stop_after", "2"])
    run_dir = tmp_path / "ckpt" / task_files(tmp_path / "ckpt")[0]
    raw = (run_dir / "task_2.pt").read_bytes()
    (run_dir / "task_2.pt").write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.warns(UserWarning, match="task_2.pt is corrupt.*falling back"):
        resumed = run([*args, "--resume"])
    assert "resumed from" in capsys.readouterr().err
    assert_same_run(resumed, checkpoints.load_checkpoint(str(run_dir / "task_3.pt")), reference_results,
                    reference_state)
