"""Mammoth's experiment and management flags, each with its meaning (see docs/mammoth.md)."""
import argparse
import json
import os

import numpy as np
import pytest
import torch

from benchmarks.compare import merge_flags
from datasets.utils.labels import CIFAR10_ASYMMETRIC, labelled_mask, noisy_labels
from tests.conftest import make_npz, tiny_run_args
from tests.dataset_builders import dataset_for
from tests.mammoth_style import mammoth_models  # noqa: F401 - fixture
from utils.errors import UserError
from utils.fitting import TaskFitting
from utils.loggers import open_loggers
from app.runner import main, run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("flags") / "d.npz"), n_classes=6, per_class=6)


def hooks_run(data, tmp_path, *extra):
    """mm_hooks (tests/mammoth_style) on 3 tasks x 12 train images, batch 4: 3 steps per epoch."""
    log = tmp_path / "hooks.json"
    base = [*tiny_run_args(data, tmp_path, n_tasks=3), "--plots", "0", "--hooks_log", str(log),
            "--results_file", str(tmp_path / "r.json")]
    res = run(["--model", "mm_hooks", *merge_flags(base, list(extra))])
    events = json.loads(log.read_text())
    return res, [e for e in events if e["hook"] == "end_task"]


# ----- schedule and stopping ----------------------------------------------------------------------
def fitting_for(**kw):
    net = torch.nn.Linear(2, 2)
    model = argparse.Namespace(opt=torch.optim.SGD(net.parameters(), lr=1.0), state_dict=net.state_dict,
                               load_state_dict=net.load_state_dict)
    args = dict(lr_scheduler=None, lr_milestones=[], sched_multistep_lr_gamma=0.1, scheduler_mode="epoch",
                fitting_mode="epochs", n_iters=None, n_epochs=4, early_stopping_patience=2,
                early_stopping_metric="loss", early_stopping_freq=1, early_stopping_epsilon=0.1, debug_mode=False)
    args.update(kw)
    return TaskFitting(model, None, argparse.Namespace(**args), steps_per_epoch=3), net, model


def test_multistep_and_cosine_schedules_by_hand():
    fit, _, model = fitting_for(lr_scheduler="multisteplr", lr_milestones=[1, 3], sched_multistep_lr_gamma=0.5)
    lrs = []
    for epoch in range(4):
        fit.after_epoch(epoch)
        lrs.append(model.opt.param_groups[0]["lr"])
    assert lrs == [0.5, 0.5, 0.25, 0.25]
    fit, _, model = fitting_for(lr_scheduler="cosine", scheduler_mode="iter", n_epochs=2)  # 6 steps in the task
    for k in range(1, 7):
        fit.after_step()
        assert model.opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + np.cos(np.pi * k / 6)), abs=1e-9)


def test_early_stopping_waits_patience_checks_and_restores_the_best_weights():
    fit, net, _ = fitting_for(fitting_mode="early_stopping")
    for value, weight in ((1.0, 1.0), (0.95, 2.0), (0.5, 3.0), (0.45, 4.0)):
        net.weight.data.fill_(weight)
        fit._check(value)
        assert not fit.done()
    net.weight.data.fill_(5.0)
    fit._check(0.44)  # second check without an improvement > epsilon (0.1) since 0.5
    assert fit.done() and fit.bad_checks == 2 and fit.best == 0.5
    assert torch.all(net.weight == 3.0)  # the weights of the best check are back


def test_scheduler_iters_inference_only_and_eval_epochs_through_the_loop(mammoth_models, data, tmp_path):
    _, ends = hooks_run(data, tmp_path, "--n_epochs", "2", "--lr_scheduler", "multisteplr", "--lr_milestones", "1",
                        "--sched_multistep_lr_gamma", "0.5")
    assert [e["steps"] for e in ends] == [6] * 3
    assert [e["lr"] for e in ends] == pytest.approx([0.025] * 3)  # rebuilt per task, halved after epoch 1
    _, ends = hooks_run(data, tmp_path, "--lr_scheduler", "multisteplr", "--lr_milestones", "2", "5",
                        "--scheduler_mode", "iter", "--fitting_mode", "iters", "--n_iters", "7")
    assert [e["steps"] for e in ends] == [7] * 3  # 3 epochs, the last cut after 1 step
    assert [e["lr"] for e in ends] == pytest.approx([0.05 * 0.01] * 3)
    res, ends = hooks_run(data, tmp_path, "--inference_only", "1")
    assert [e["steps"] for e in ends] == [0, 0, 0] and len(res["accuracy_matrix_class_il"]) == 3
    res, _ = hooks_run(data, tmp_path, "--n_epochs", "2", "--eval_epochs", "1")
    assert [(e["task"], e["epoch"], len(e["class_il"])) for e in res["epoch_evaluations"]] == \
        [(0, 0, 1), (0, 1, 1), (1, 0, 2), (1, 1, 2), (2, 0, 3), (2, 1, 3)]
    assert res["epoch_evaluations"][-1]["class_il"] == res["accuracy_matrix_class_il"][-1]


def test_early_stopping_run_stops_after_patience(mammoth_models, data, tmp_path):
    # an epsilon nobody beats: the first check sets the best, the next `patience` checks fail
    _, ends = hooks_run(data, tmp_path, "--fitting_mode", "early_stopping", "--validation", "20",
                        "--early_stopping_patience", "2", "--early_stopping_epsilon", "1e9")
    n_train = 12 - 2 * 2  # ceil(6 * 20%) = 2 images of each class go to validation: 8 per task, 2 steps/epoch
    assert [e["steps"] for e in ends] == [3 * ((n_train + 3) // 4)] * 3  # 3 epochs: best, then 2 worse checks


def test_start_from_and_eval_future(mammoth_models, data, tmp_path):
    res, ends = hooks_run(data, tmp_path, "--start_from", "2", "--eval_future", "1")
    assert [(e["current_task"], e["steps"]) for e in ends] == [(0, 0), (1, 0), (2, 3)]
    assert res["start_from"] == 2 and len(res["accuracy_matrix_class_il"]) == 3
    assert [len(r) for r in res["future_accuracy_class_il"]] == [0]  # only the trained task; nothing after it
    res, _ = hooks_run(data, tmp_path, "--eval_future", "1")
    assert [len(r) for r in res["future_accuracy_class_il"]] == [2, 1, 0]


# ----- labels ----------------------------------------------------------------------------------------
def test_custom_class_and_task_order(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=4)
    ds = dataset_for(tmp_path, "--dataset", "seq-custom", "--data_path", path, "--n_tasks", "3",
                     "--custom_class_order", "5,4,3,2,1,0")
    assert ds.scenario.relabel(np.array([5, 4, 0])).tolist() == [0, 1, 5]  # first listed = first learnt
    ds = dataset_for(tmp_path, "--dataset", "seq-custom", "--data_path", path, "--classes_per_task", "1,2,3",
                     "--custom_task_order", "2,0,1")
    assert ds.scenario.classes_per_task == (3, 1, 2)
    assert ds.scenario.relabel(np.arange(6)).tolist() == [3, 4, 5, 0, 1, 2]
    train, _ = ds.get_data_loaders()
    assert sorted(set(torch.cat([b[1] for b in train]).tolist())) == [0, 1, 2]
    with pytest.raises(UserError, match="must list each of the 6 class ids"):
        dataset_for(tmp_path, "--dataset", "seq-custom", "--data_path", path, "--custom_class_order", "0,1,2")
    with pytest.raises(UserError, match="keep one"):
        dataset_for(tmp_path, "--dataset", "seq-custom", "--data_path", path, "--custom_class_order",
                    "0,1,2,3,4,5", "--permute_classes", "1", "--seed", "0")


def test_label_masks_count_per_group():
    groups = np.repeat([0, 1, 2], [10, 4, 1])
    keep = labelled_mask(groups, 0.5, seed=0)
    assert [int(keep[groups == g].sum()) for g in range(3)] == [5, 2, 1]


def test_label_perc_unlabelled_samples_are_dropped_before_observe(mammoth_models, data, tmp_path):
    _, ends = hooks_run(data, tmp_path, "--label_perc_by_task", "0.5")
    assert [(e["seen"], e["labelled"]) for e in ends] == [(6, 6)] * 3  # 12 images per task, half labelled
    _, ends = hooks_run(data, tmp_path, "--label_perc_by_class", "0.34")
    assert [e["seen"] for e in ends] == [4] * 3  # round(0.34 * 6) = 2 per class, 2 classes per task


def test_noise_symmetric_and_asymmetric():
    y = np.repeat(np.arange(10), 100)
    noisy = noisy_labels(y, 10, 1.0, "symmetric", 0, "seq-custom")
    assert (noisy != y).all() and np.bincount(noisy, minlength=10).min() > 50
    half = noisy_labels(y, 10, 0.3, "symmetric", 0, "seq-custom")
    assert 0.25 < (half != y).mean() < 0.35
    asym = noisy_labels(y, 10, 1.0, "asymmetric", 0, "seq-cifar10")
    expected = np.array([CIFAR10_ASYMMETRIC.get(c, c) for c in y])
    assert (asym == expected).all()
    with pytest.raises(UserError, match="asymmetric is defined for"):
        noisy_labels(y, 10, 0.5, "asymmetric", 0, "seq-cifar100")


def test_noisy_labels_reach_observe_with_true_labels_and_are_cached(mammoth_models, data, tmp_path):
    _, ends = hooks_run(data, tmp_path, "--noise_rate", "1.0")
    assert [e["noisy"] for e in ends] == [e["seen"] for e in ends]  # every label is wrong, true_labels tell
    cache = tmp_path / "data" / "noisy_labels"
    assert len(os.listdir(cache)) == 1
    _, ends = hooks_run(data, tmp_path, "--noise_rate", "0.5", "--disable_noisy_labels_cache", "1")
    assert len(os.listdir(cache)) == 1 and 0 < sum(e["noisy"] for e in ends) < sum(e["seen"] for e in ends)


# ----- outputs, checkpoints, refusals -------------------------------------------------------------
def test_results_path_disable_log_and_nowand(mammoth_models, data, tmp_path):
    args = ["--model", "mm_hooks", *tiny_run_args(data, tmp_path, n_tasks=3), "--plots", "0",
            "--hooks_log", str(tmp_path / "h.json")]
    res = run([*args, "--results_path", "elsewhere"])
    assert res["results_file"].startswith(str(tmp_path / "data" / "elsewhere" / "class-il" / "seq-custom" / "mm_hooks"))
    assert os.path.isfile(res["results_file"])
    res = run([*args, "--results_path", "quiet", "--disable_log", "1"])
    assert res["results_file"] is None and not (tmp_path / "data" / "quiet").exists()
    assert open_loggers(argparse.Namespace(wandb_project="p", nowand=True, tensorboard=None), "run") == []


def test_save_after_interrupt_then_loadcheck(mammoth_models, data, tmp_path, capsys):
    args = ["--model", "mm_hooks", *tiny_run_args(data, tmp_path, n_tasks=3), "--plots", "0",
            "--hooks_log", str(tmp_path / "h.json"), "--results_file", str(tmp_path / "r.json")]
    assert main([*args, "--interrupt_at_task", "1"]) == 130  # Ctrl-C's exit code
    err = capsys.readouterr().err
    assert "stopped by SIGINT after 1 finished task(s)" in err and "--loadcheck" in err
    paused = err.split("--loadcheck ")[-1].strip()
    assert os.path.dirname(paused) == str(tmp_path / "ckpt" / "paused")
    res = run([*args, "--loadcheck", paused, "--interrupt_at_task", "-1"])  # the checkpoint stored 1
    assert res["complete"] and len(res["accuracy_matrix_class_il"]) == 3
    assert main([*args, "--interrupt_at_task", "1", "--save_after_interrupt", "0",
                 "--ckpt_name", "other"]) == 130
    assert not os.path.exists(tmp_path / "ckpt" / "paused" / "other.pt")


@pytest.mark.parametrize("extra, message", [
    (["--load_best_args"], "--load_best_args is not supported"),
    (["--fitting_mode", "time"], "--fitting_mode time is not supported"),
    (["--save_checkpoint_mode", "old_pickle"], "--save_checkpoint_mode old_pickle is not supported"),
    (["--fitting_mode", "iters"], "--fitting_mode iters needs --n_iters"),
    (["--fitting_mode", "early_stopping"], "needs --validation"),
    (["--eval_future", "1"], "--eval_future needs a model with future_forward"),
    (["--start_from", "5"], "--start_from 5 exceeds the 3 tasks"),
])
def test_refused_flags_are_one_line_errors(data, tmp_path, capsys, extra, message):
    assert main(["--model", "sgd", *tiny_run_args(data, tmp_path, n_tasks=3), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_transform_type_strong_of_seq_cifar100_224(tmp_path):
    from torchvision import transforms as T
    weak = dataset_for(tmp_path, "--dataset", "seq-cifar100-224").get_transform()
    strong = dataset_for(tmp_path, "--dataset", "seq-cifar100-224", "--transform_type", "strong").get_transform()
    names = [type(op).__name__ for op in strong.transforms]
    assert names[:4] == [type(op).__name__ for op in weak.transforms][:2] + ["ColorJitter", "RandomRotation"]
    assert isinstance(strong.transforms[4], T.ToTensor)
