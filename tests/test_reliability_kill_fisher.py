"""SIGKILL in the middle of the second-order model's Fisher pass, then ``--resume``: same final metrics."""
import os
import signal
import subprocess
import sys

from tests.conftest import ROOT, make_npz, tiny_run_args
from app.runner import run

FAST = ["--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
        "--batch_size_align_pretuning", "8", "--stats_batch_size", "4", "--alpha_ita", "1"]


def test_sigkill_during_fisher_then_resume_equals_uninterrupted(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=6)

    def args(folder):
        return ["--model", "second_order", *tiny_run_args(data, folder, n_tasks=3), *FAST, "--savecheck", "task",
                "--plots", "0", "--results_file", str(folder / "r.json")]
    reference = run(args(tmp_path / "ref"))
    killed = tmp_path / "killed"
    env = {**os.environ, "CL_TEST_KILL_AT": "fisher:2", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "main.py", *args(killed)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = killed / "ckpt" / os.listdir(killed / "ckpt")[0]
    assert sorted(os.listdir(run_dir)) == ["task_1.pt"]  # died inside task 2's Fisher pass
    resumed = run([*args(killed), "--resume"])
    for key in ("accuracy_matrix_class_il", "accuracy_matrix_task_il", "final_class_il", "forgetting"):
        assert resumed[key] == reference[key], key
