"""Whole runs through the command-line entry point."""
import json
import os

import pytest

from tests.conftest import make_npz, shared_file, tiny_run_args
from app.runner import main, run
from tests.conftest import read_file

METRIC_KEYS = ("accuracy_matrix_class_il", "accuracy_matrix_task_il", "final_class_il", "final_task_il",
               "forgetting", "bwt")


def test_run_writes_complete_results(tmp_path, capsys):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    out = str(tmp_path / "res" / "r.json")
    assert main(["--model", "sgd", *tiny_run_args(path, tmp_path, "--results_file", out,
                                                  "--enable_other_metrics")]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"results: {out}"
    res = json.loads(read_file(out))
    for key in METRIC_KEYS + ("args", "timings", "peak_memory_mb", "versions", "fwt"):
        assert key in res, key
    R = res["accuracy_matrix_class_il"]
    assert [len(r) for r in R] == [1, 2]
    assert res["final_class_il"] == pytest.approx(sum(R[-1]) / 2)
    assert res["forgetting"] == pytest.approx(max(R[0][0], R[1][0]) - R[1][0])
    assert res["bwt"] == pytest.approx(R[1][0] - R[0][0])
    assert len(res["timings"]["per_task"]) == 2 and res["timings"]["total_seconds"] > 0
    assert res["versions"]["torch"] and res["args"]["model"] == "sgd" and res["complete"] is True


def test_resume_gives_the_same_metrics(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=6)
    full = run(["--model", "sgd", *tiny_run_args(path, tmp_path, n_tasks=3),
                "--results_file", str(tmp_path / "full.json")])
    args = ["--model", "sgd", *tiny_run_args(path, tmp_path, n_tasks=3), "--savecheck", "task"]
    first = run([*args, "--stop_after", "1", "--results_file", str(tmp_path / "part.json")])
    assert first["tasks_done"] == 1 and first["complete"] is False
    resumed = run([*args, "--resume", "--results_file", str(tmp_path / "resumed.json")])
    assert resumed["tasks_done"] == 3
    for key in METRIC_KEYS:
        assert resumed[key] == full[key], key
    # --loadcheck of the task-1 checkpoint continues the same way
    ckpt = os.path.join(str(tmp_path / "ckpt"), os.listdir(tmp_path / "ckpt")[0], "task_1.pt")
    again = run(["--loadcheck", ckpt, "--results_file", str(tmp_path / "again.json"), "--non_verbose"])
    assert again["accuracy_matrix_class_il"] == full["accuracy_matrix_class_il"]


def test_checkpoint_of_another_model_is_rejected(tmp_path, capsys):
    path = make_npz(str(tmp_path / "d.npz"))
    run(tiny_run_args(path, tmp_path, "--model", "sgd", "--savecheck", "last"))
    folder = tmp_path / "ckpt" / os.listdir(tmp_path / "ckpt")[0]
    ckpt = str(folder / "task_2.pt")
    code = main(["--model", "joint", *tiny_run_args(path, tmp_path, "--loadcheck", ckpt,
                                                     "--results_file", str(tmp_path / "x.json"))])
    assert code == 2 and "is from model sgd" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_unwritable_results_folder(tmp_path, capsys):
    path = make_npz(str(tmp_path / "d.npz"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["--model", "sgd", *tiny_run_args(path, tmp_path, "--results_file", str(blocker / "r.json"))])
    assert code == 2 and "not writable" in capsys.readouterr().err


def test_nan_loss_stops_with_task_epoch_step(tmp_path, capsys):
    path = make_npz(str(tmp_path / "d.npz"))
    args = tiny_run_args(path, tmp_path)
    args[args.index("--lr") + 1] = "1e30"
    code = main(["--model", "sgd", *args, "--results_file", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 3 and "at task 1, epoch 1, step" in err
    assert not (tmp_path / "r.json").exists()


def test_joint_beats_sgd_on_cifar10_mini(tmp_path):
    data = shared_file("cifar10_mini.npz")
    common = ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", "5", "--backbone", "vit_tiny",
              "--embed_dim", "64", "--depth", "2", "--lr", "0.03", "--optim_mom", "0.9", "--n_epochs", "1",
              "--batch_size", "64", "--seed", "0", "--non_verbose", "--base_path", str(tmp_path)]
    sgd = run(["--model", "sgd", *common])
    joint = run(["--model", "joint", *common])
    assert sgd["final_class_il"] < 25.0  # catastrophic forgetting: about the last task only
    assert joint["final_class_il"] > sgd["final_class_il"] + 5.0
