"""SIGTERM (what SLURM sends before killing a job) is handled like Ctrl-C: the run stops at the next safe point
with exit code 143, the last finished task's checkpoint is complete and ``--resume`` continues from it."""
import os
import signal
import subprocess
import sys
import time

import pytest

import app.runner
from tests.conftest import ROOT, make_npz
from tests.test_reliability_kill import assert_same_run, run_args, task_files
from utils import checkpoints
from app.runner import main, run
from utils.stopping import Stopped, sigterm_stops_at_safe_points, stop_requested


def test_sigterm_stops_at_a_safe_point_and_resume_equals_uninterrupted(tmp_path):
    reference_dir = tmp_path / "reference"
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=6)
    reference = run(run_args(data, reference_dir))
    reference_state = checkpoints.load_checkpoint(
        str(reference_dir / "ckpt" / task_files(reference_dir / "ckpt")[0] / "task_3.pt"))

    folder = tmp_path / "stopped"
    args = run_args(data, folder)
    marker = tmp_path / "paused"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CL_TEST_PAUSE_AT": "train:2:1:2", "CL_TEST_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1][-2000:]
        os.kill(proc.pid, signal.SIGTERM)  # from outside, while task 2 is being trained
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: stopped by SIGTERM after 1 finished task(s); "
                                                   "checkpoints of finished tasks are in "), err
    assert "rerun with --resume" in lines[0]  # (the paused state, when saved, is named after it)
    run_dir = folder / "ckpt" / [d for d in task_files(folder / "ckpt") if d != "paused"][0]  # paused/: the interrupted state
    assert task_files(run_dir) == ["task_1.pt"]  # complete (hash-checked on load), nothing half-written
    assert checkpoints.load_checkpoint(str(run_dir / "task_1.pt"))["tasks_done"] == 1
    assert not (folder / "res" / "r.json").exists()

    resumed = run([*args, "--resume"])
    assert_same_run(resumed, checkpoints.load_checkpoint(str(run_dir / "task_3.pt")), reference, reference_state)


def test_ctrl_c_and_handler_scope(tmp_path, capsys, monkeypatch):
    """Ctrl-C during training: exit code 130; the SIGTERM handler exists only while ``main`` runs."""
    data = make_npz(str(tmp_path / "d.npz"))

    def interrupted(*a, **k):
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        raise KeyboardInterrupt
    monkeypatch.setattr(app.runner, "train", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    assert main(run_args(data, tmp_path)) == 130
    assert capsys.readouterr().err.strip().startswith("error: stopped by SIGINT after 0 finished task(s)")
    assert signal.getsignal(signal.SIGTERM) is before and not stop_requested()


def test_a_second_sigterm_stops_at_once():
    with sigterm_stops_at_safe_points():
        os.kill(os.getpid(), signal.SIGTERM)  # the first only records the request
        time.sleep(0.01)
        assert stop_requested()
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert not stop_requested()
