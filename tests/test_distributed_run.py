"""Whole runs under torchrun with 2 CPU processes (gloo): same metrics as one process; a crash ends the job."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, make_npz, tiny_run_args
from app.runner import run
from tests.conftest import read_file


def torchrun(args, env_extra=None, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "main.py", *args, "--distributed", "ddp", "--dist_timeout", "60"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_run")
    data = make_npz(str(tmp / "d.npz"), n_classes=4, per_class=8)
    args = ["--model", "sgd", *tiny_run_args(data, tmp), "--augment", "0", "--plots", "0"]
    single = run(args + ["--results_file", str(tmp / "single.json")])
    return tmp, args, single


def test_ddp_metrics_equal_single_process(setup):
    tmp, args, single = setup
    out = torchrun(args + ["--results_file", str(tmp / "ddp.json")])
    assert out.returncode == 0, out.stderr[-2000:]
    ddp = json.loads(read_file(tmp / "ddp.json"))
    assert out.stdout.count("results: ") == 1  # only rank 0 reports and writes
    for key in ("accuracy_matrix_class_il", "accuracy_matrix_task_il"):
        for row_a, row_b in zip(single[key], ddp[key]):
            assert row_a == pytest.approx(row_b, abs=1e-6), key


def test_a_crash_on_one_rank_ends_the_job(setup):
    tmp, args, _ = setup
    out = torchrun(args + ["--results_file", str(tmp / "crash.json")],
                   env_extra={"CL_TEST_KILL_AT": "train:1:1:2", "CL_TEST_KILL_RANK": "1"})
    assert out.returncode != 0
    assert not (tmp / "crash.json").exists()


def test_ddp_needs_torchrun(setup, capsys):
    tmp, args, _ = setup
    from app.runner import main
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           if k in os.environ}
    try:
        assert main(args + ["--distributed", "ddp"]) == 2
    finally:
        os.environ.update(env)
    assert "must be launched with torchrun" in capsys.readouterr().err


def test_ddp_ewc_matches_single_process(setup):
    """EWC sums its Fisher over ranks: the data order and Fisher are those of one process, so equal metrics."""
    tmp, args, _ = setup
    args = [a if a != "sgd" else "ewc_on" for a in args] + ["--e_lambda", "10"]
    single = run(args + ["--results_file", str(tmp / "ewc_single.json")])
    out = torchrun(args + ["--results_file", str(tmp / "ewc_ddp.json")])
    assert out.returncode == 0, out.stderr[-2000:]
    ddp = json.loads(read_file(tmp / "ewc_ddp.json"))
    for row_a, row_b in zip(single["accuracy_matrix_class_il"], ddp["accuracy_matrix_class_il"]):
        assert row_a == pytest.approx(row_b, abs=1e-6)


def test_ddp_replay_buffer_holds_every_rank_s_examples(setup):
    """ER under DDP: rank 0's checkpointed buffer was offered the whole global stream (every training image of
    both ranks' shards, as in one process) and stores only real training images. (Replay draws differ from one
    process, so the metrics are not compared.)"""
    import torch

    from utils.checkpoints import load_checkpoint
    tmp, args, _ = setup
    args = [a if a != "sgd" else "er" for a in args] + ["--buffer_size", "6", "--savecheck", "last",
                                                        "--ckpt_name", "er_ddp"]
    out = torchrun(args + ["--results_file", str(tmp / "er_ddp.json")])
    assert out.returncode == 0, out.stderr[-2000:]
    buffer = load_checkpoint(str(tmp / "ckpt" / "er_ddp" / "task_2.pt"))["model_state"]["buffer"]
    assert buffer["num_seen_examples"] == 4 * 8  # 4 classes x 8 training images, both tasks, both shards
    data = __import__("numpy").load(tmp / "d.npz")
    train = torch.from_numpy(data["x_train"]).float() / 255
    for example in buffer["examples"]:
        assert (train - example).abs().flatten(1).amax(1).min() < 1e-6  # a stored image is a training image



def test_ddp_gathered_class_features_match_single_process(setup):
    """SEED (like SimpleCIL) gathers its class features from every rank: the same metrics as one process.
    (InfLoRA's summed Gram matrices and the other new methods were checked the same way by hand, see
    docs/baselines.md; one torchrun test keeps the suite short.)"""
    tmp, args, _ = setup
    model, extra = "seed", ["--num_experts", "1", "--seed_cov_eps", "0.01"]
    args = [a if a != "sgd" else model for a in args] + extra
    single = run(args + ["--results_file", str(tmp / f"{model}_single.json")])
    out = torchrun(args + ["--results_file", str(tmp / f"{model}_ddp.json")])
    assert out.returncode == 0, out.stderr[-2000:]
    ddp = json.loads(read_file(tmp / f"{model}_ddp.json"))
    for row_a, row_b in zip(single["accuracy_matrix_class_il"], ddp["accuracy_matrix_class_il"]):
        assert row_a == pytest.approx(row_b, abs=1e-6)

def test_unsupported_method_is_a_clear_error(setup, capsys):
    tmp, args, _ = setup
    args = [a if a != "sgd" else "ranpac" for a in args]
    out = torchrun(args + ["--results_file", str(tmp / "ranpac.json")])
    assert out.returncode != 0 and "does not support --distributed ddp" in out.stderr


def test_ddp_stop_and_resume_equals_single_process(setup):
    """Rank 0 writes the checkpoint after task 1; a second torchrun job resumes from it on every rank."""
    tmp, args, single = setup
    ck = ["--checkpoint_path", str(tmp / "ck_resume"), "--savecheck", "task"]
    args = [a for a in args]
    i = args.index("--checkpoint_path")
    del args[i:i + 2]
    first = torchrun(args + ck + ["--stop_after", "1", "--results_file", str(tmp / "part.json")])
    assert first.returncode == 0, first.stderr[-2000:]
    second = torchrun(args + ck + ["--resume", "--results_file", str(tmp / "resumed.json")])
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = json.loads(read_file(tmp / "resumed.json"))
    assert resumed["complete"]
    for row_a, row_b in zip(single["accuracy_matrix_class_il"], resumed["accuracy_matrix_class_il"]):
        assert row_a == pytest.approx(row_b, abs=1e-6)
