"""Every bad input: one ``error: ...`` line saying what is wrong and how to fix it, a non-zero exit code,
no traceback (unless ``--traceback``) and no results or temporary file left behind."""
import errno
import os
import types

import numpy as np
import pytest
import torch

import app.config
from models.sgd import Sgd
from tests.conftest import make_npz, tiny_run_args
from utils import checkpoints
from app.config import parse_args
from utils.errors import UserError
from datasets.utils.continual_dataset import ContinualDataset
from datasets.utils.sources import ImageSource
from app.runner import check_compatibility, main, wants_traceback
from tests.conftest import read_file


@pytest.fixture
def setup(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"))
    results = tmp_path / "res" / "r.json"

    def argv(*extra, data_path=data, model="sgd"):
        return ["--model", model, *tiny_run_args(data_path, tmp_path, "--results_file", str(results)), *extra]
    return types.SimpleNamespace(data=data, results=results, argv=argv, tmp=tmp_path)


def assert_one_line_error(capsys, setup, argv, *fragments, code=2):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not setup.results.exists()
    leftovers = [os.path.join(r, f) for r, _, fs in os.walk(setup.tmp) for f in fs if f.startswith(".tmp-")]
    assert not leftovers
    return lines[0]


def replace(argv, flag, value):
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.mark.parametrize("flag, value, fragments", [
    ("--model", "sgdd", ["unknown model 'sgdd'", "did you mean: sgd"]),
    ("--dataset", "seq-custm", ["unknown dataset 'seq-custm'", "seq-custom"]),
    ("--backbone", "vit_tny", ["unknown backbone 'vit_tny'", "vit-tiny"]),
    ("--lr", "-0.1", ["--lr", "expected a number > 0, got '-0.1'"]),
    ("--lr", "fast", ["--lr", "expected a number > 0, got 'fast'"]),
    ("--n_epochs", "0", ["--n_epochs", "expected an integer >= 1, got '0'"]),
    ("--batch_size", "1.5", ["--batch_size", "expected an integer >= 1"]),
    ("--n_tasks", "9", ["--n_tasks 9 exceeds the 4 classes"]),
])
def test_bad_values(setup, capsys, flag, value, fragments):
    assert_one_line_error(capsys, setup, replace(setup.argv(), flag, value), *fragments)


def test_misspelled_and_out_of_range_flags(setup, capsys):
    assert_one_line_error(capsys, setup, setup.argv("--n_epoch", "2"), "unrecognized arguments: --n_epoch 2",
                          "did you mean: --n_epochs")
    assert_one_line_error(capsys, setup, setup.argv("--validation", "150"), "--validation",
                          "expected a percentage in (0, 100)")
    assert_one_line_error(capsys, setup, setup.argv("--seed", "0"), "--seed is given twice")


def test_lora_rank_zero(setup, capsys):
    """``--lora_r`` belongs to the second-order model."""
    assert_one_line_error(capsys, setup, setup.argv("--lora_r", "0", model="second_order"), "--lora_r",
                          "expected an integer >= 1, got '0'")


def test_unknown_yaml_keys(setup, capsys, monkeypatch, tmp_path):
    ds_dir, model_dir = tmp_path / "dsconf", tmp_path / "modelconf"
    (ds_dir / "seq-custom").mkdir(parents=True)
    model_dir.mkdir()
    (ds_dir / "seq-custom" / "mine.yaml").write_text("n_epoch: 3\n")
    (ds_dir / "seq-custom" / "struct.yaml").write_text("N_TASK: 3\n")
    (model_dir / "sgd.yaml").write_text("default:\n  lrr: 0.1\n")
    monkeypatch.setattr(app.config, "DATASET_CONFIG_DIR", str(ds_dir))
    assert_one_line_error(capsys, setup, setup.argv("--dataset_config", "mine"), "unknown key 'n_epoch'",
                          "did you mean: n_epochs")
    assert_one_line_error(capsys, setup, setup.argv("--dataset_config", "struct"), "unknown structure key 'N_TASK'")
    monkeypatch.setattr(app.config, "MODEL_CONFIG_DIR", str(model_dir))
    assert_one_line_error(capsys, setup, setup.argv(), "unknown key 'lrr'", "did you mean: lr")


def test_model_incompatible_with_the_setting(setup, capsys, monkeypatch):
    domain = types.SimpleNamespace(SETTING="domain-il", NAME="rotated")
    only_class = types.SimpleNamespace(NAME="classy", COMPATIBILITY=["class-il"])
    with pytest.raises(UserError, match="model classy does not support the domain-il setting of rotated"):
        check_compatibility(only_class, domain)
    check_compatibility(Sgd, domain)  # sgd supports it: no error
    monkeypatch.setattr(Sgd, "COMPATIBILITY", ["domain-il"])
    assert_one_line_error(capsys, setup, setup.argv(), "model sgd does not support the class-il setting",
                          "supports: domain-il")


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_data_files(setup, capsys, tmp_path):
    x = np.zeros((8, 8, 8, 3), np.uint8)
    y = np.repeat(np.arange(4), 2)
    cases = [
        (str(tmp_path / "missing.npz"), ["--data_path", "does not exist"]),
        (write_npz(tmp_path / "keys.npz", images=x, labels=y), ["lacks the keys x_train, y_train, x_test, y_test"]),
        (write_npz(tmp_path / "len.npz", x_train=x, y_train=y[:5], x_test=x, y_test=y), ["x_train has 8 images but "
                                                                                          "y_train has 5 labels"]),
        (write_npz(tmp_path / "neg.npz", x_train=x, y_train=y - 1, x_test=x, y_test=y), ["labels must be integers in"]),
        (write_npz(tmp_path / "float.npz", x_train=x.astype(np.float32), y_train=y, x_test=x, y_test=y),
         ["x_train must be uint8"]),
    ]
    partial = tmp_path / "partial.npz"
    partial.write_bytes(read_file(setup.data, "rb")[:300])  # a download cut short
    cases.append((str(partial), ["cannot read", "as an npz file"]))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(2000))
    cases.append((str(junk), ["cannot read", "as an npz file"]))
    for path, fragments in cases:
        assert_one_line_error(capsys, setup, setup.argv(data_path=path), *fragments)
    unseen = write_npz(tmp_path / "unseen.npz", x_train=x, y_train=y, x_test=x, y_test=y + 4)
    assert_one_line_error(capsys, setup, setup.argv(data_path=unseen), "task 2 (classes 4-7) has no training images")
    assert_one_line_error(capsys, setup, setup.argv("--classes_per_task", "1,1"),
                          "--classes_per_task sums to 2 but", "has 4 classes")


class FourClasses(ContinualDataset):
    NAME, N_TASKS, N_CLASSES_PER_TASK = "four", 2, 2

    def load(self):
        x = np.zeros((4, 8, 8, 3), np.uint8)
        return ImageSource(x, [0, 1, 2, 3]), ImageSource(x, [0, 1, 2, 7])


def test_labels_out_of_range(setup):
    dataset = FourClasses(parse_args(setup.argv()))
    with pytest.raises(UserError, match=r"four: test labels must lie in \[0, 4\), found \[0, 7\]"):
        dataset.splits


def fake_checkpoint(setup, path, argv, model_state=None, tasks=1):
    args = parse_args(argv)
    record = {"accuracy_matrix_class_il": [[50.0]] * tasks, "accuracy_matrix_task_il": [[50.0]] * tasks}
    checkpoints.save_checkpoint(str(path), {"args": vars(args), "record": record, "rng": checkpoints.rng_state(),
                                            "model_state": model_state or {"model": {}, "current_task": tasks},
                                            "tasks_done": tasks})
    return str(path)


def test_bad_checkpoints(setup, capsys, tmp_path):
    other_dataset = fake_checkpoint(setup, tmp_path / "c1.pt", setup.argv())
    argv = ["--loadcheck", other_dataset, "--dataset", "seq-cifar10", "--results_file", str(setup.results)]
    assert_one_line_error(capsys, setup, argv, "is from model sgd on seq-custom, not sgd on seq-cifar10")
    misfit = fake_checkpoint(setup, tmp_path / "c2.pt", setup.argv(),
                             {"model": {"net.w": torch.zeros(2)}, "current_task": 1})
    assert_one_line_error(capsys, setup, setup.argv("--loadcheck", misfit), "does not fit this model")
    (tmp_path / "c3.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert_one_line_error(capsys, setup, setup.argv("--loadcheck", str(tmp_path / "c3.pt")), "is corrupt")
    assert_one_line_error(capsys, setup, setup.argv("--loadcheck", str(tmp_path / "nope.pt")), "does not exist")
    # --ckpt_name names the run folder explicitly: --resume refuses a checkpoint made with other arguments
    named = setup.argv("--ckpt_name", "mine", "--savecheck", "task")
    fake_checkpoint(setup, tmp_path / "ckpt" / "mine" / "task_1.pt", named)
    assert_one_line_error(capsys, setup, replace(named, "--lr", "0.5") + ["--resume"],
                          "was made with other arguments (lr: 0.05 -> 0.5)")


def test_without_ckpt_name_resume_only_finds_identical_arguments(setup):
    a, b = parse_args(setup.argv()), parse_args(replace(setup.argv(), "--lr", "0.5"))
    c = parse_args(setup.argv("--device", "cpu", "--num_workers", "1", "--plots", "0", "--notes", "x"))
    assert checkpoints.run_dir(a) != checkpoints.run_dir(b)   # semantic change: another folder
    assert checkpoints.run_dir(a) == checkpoints.run_dir(c)   # where/how it runs: the same run


def test_unwritable_folders(setup, capsys):
    blocker = setup.tmp / "file"
    blocker.write_text("x")
    assert_one_line_error(capsys, setup, replace(setup.argv(), "--results_file", str(blocker / "r.json")),
                          "results folder", "is not writable")
    assert_one_line_error(capsys, setup, replace(setup.argv("--savecheck", "task"), "--checkpoint_path",
                                                 str(blocker / "ck")), "checkpoint folder", "is not writable")


def test_no_space_left(setup, capsys, monkeypatch):
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k)))
    line = assert_one_line_error(capsys, setup, setup.argv(), "no space left on the device to write")
    assert not list(setup.results.parent.iterdir())  # no plot, no JSON, no temporary file


def test_nan_loss_keeps_the_last_good_checkpoint(setup, capsys, monkeypatch):
    real_observe = Sgd.observe

    def observe(self, *args, **kwargs):
        real_observe(self, *args, **kwargs)
        return float("nan") if self.current_task == 1 else 0.5
    monkeypatch.setattr(Sgd, "observe", observe)
    assert_one_line_error(capsys, setup, setup.argv("--savecheck", "task"), "loss is nan at task 2, epoch 1, step 1",
                          "lower --lr", code=3)
    run_dir = setup.tmp / "ckpt" / os.listdir(setup.tmp / "ckpt")[0]
    assert sorted(os.listdir(run_dir)) == ["task_1.pt"]
    assert checkpoints.load_checkpoint(str(run_dir / "task_1.pt"))["tasks_done"] == 1


def test_traceback_only_when_asked(setup, capsys):
    assert main(replace(setup.argv("--traceback"), "--model", "nope")) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: unknown")
    assert wants_traceback(["--traceback", "1"]) and wants_traceback(["--traceback=true"])
    assert not wants_traceback(["--traceback", "0"]) and not wants_traceback(["--lr", "1"])


def test_every_torch_load_uses_weights_only():
    """No code path can unpickle arbitrary objects: each ``torch.load`` call passes ``weights_only=True``."""
    import ast
    from tests.conftest import ROOT
    offenders = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "data", "checkpoints")]
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(read_file(path), path)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                    safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                               for k in node.keywords)
                    if not safe:
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_partial_or_corrupt_builtin_dataset_files(tmp_path, capsys):
    import pickle
    folder = tmp_path / "data" / "CIFAR10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    (folder / "data_batch_3").write_bytes(batch[: len(batch) // 2])  # cut short
    setup = types.SimpleNamespace(results=tmp_path / "r.json", tmp=tmp_path)
    argv = ["--model", "sgd", "--dataset", "seq-cifar10", "--lr", "0.1", "--base_path", str(tmp_path / "data"),
            "--results_file", str(setup.results)]
    assert_one_line_error(capsys, setup, argv, "corrupt CIFAR file", "data_batch_3", "delete it to re-download")
    (folder / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)}))  # no labels
    assert_one_line_error(capsys, setup, argv, "corrupt CIFAR file", "data_batch_3")
