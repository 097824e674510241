"""``torchrun`` without ``--distributed ddp``: a one-line error, exit code 2, nothing written."""
import os
import subprocess
import sys

from tests.conftest import ROOT, make_npz, tiny_run_args


def test_torchrun_without_distributed_ddp_is_refused(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=4)
    out_dir = tmp_path / "out"
    args = ["--model", "sgd", *tiny_run_args(data, out_dir), "--results_file", str(out_dir / "r.json"),
            "--savecheck", "last"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "main.py", *args]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    # one line per process that reached its check: torchrun stops the other one after the first failure
    assert 1 <= len(errors) <= 2, out.stderr[-2000:]
    assert all("WORLD_SIZE=2" in e and "--distributed ddp" in e for e in errors)
    assert "File \"" + os.path.join(ROOT, "main.py") not in out.stderr  # no traceback of ours (torchrun prints its own)
    assert "exitcode  : 2" in out.stderr  # torchrun's failure summary: the processes exited with 2
    assert not out_dir.exists()  # no results, checkpoints or folders


def test_world_size_above_one_without_ddp_exits_2(tmp_path, monkeypatch, capsys):
    from app.runner import main
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    out_dir = tmp_path / "out"
    assert main(["--model", "sgd", *tiny_run_args(data, out_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WORLD_SIZE=4" in err[0] and "--distributed ddp" in err[0]
    assert not out_dir.exists()
    monkeypatch.setenv("WORLD_SIZE", "1")  # a one-process torchrun is an ordinary run
    assert main(["--model", "sgd", *tiny_run_args(data, out_dir), "--results_file", str(out_dir / "r.json")]) == 0
