"""No warning from this project's code: the suite's configuration turns them into errors (pytest.ini), and the
learning-rate schedule is set without a torch scheduler (no step-order warning, the same learning rates)."""
import argparse
import configparser
import os
import re
import warnings

import pytest
import torch

from utils.fitting import LRSchedule, TaskFitting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_filter() -> str:
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "pytest.ini"))
    lines = [line.strip() for line in parser["pytest"]["filterwarnings"].splitlines() if line.strip()]
    return next(line for line in lines if line.startswith("error::Warning:"))


def test_project_warnings_are_errors_and_third_party_ones_are_not():
    module = re.compile(project_filter().split(":", 3)[3])
    for ours in ("utils.fitting", "models.second_order_utils.alignment", "app.demo", "main", "tests.test_warnings"):
        assert module.match(ours), ours
    for theirs in ("torch.optim.lr_scheduler", "timm.layers.config", "numpy", "utilsx", "modelsfoo.bar"):
        assert not module.match(theirs), theirs


def test_a_project_warning_fails_here():
    with pytest.raises(UserWarning):
        warnings.warn("raised by this project's code")


def fitting(kind: str, **kw):
    net = torch.nn.Linear(2, 2)
    model = argparse.Namespace(opt=torch.optim.SGD(net.parameters(), lr=0.8), state_dict=net.state_dict,
                               load_state_dict=net.load_state_dict)
    args = dict(lr_scheduler=kind, lr_milestones=[2, 2, 5], sched_multistep_lr_gamma=0.3, scheduler_mode="epoch",
                fitting_mode="epochs", n_iters=None, n_epochs=9, debug_mode=False)
    args.update(kw)
    return TaskFitting(model, None, argparse.Namespace(**args), steps_per_epoch=3), model.opt


@pytest.mark.parametrize("kind", ["multisteplr", "cosine"])
def test_schedule_equals_torch_schedulers_without_their_warning(kind):
    """The learning rates of MultiStepLR (a repeated milestone included) and CosineAnnealingLR over 12 epochs
    (past T_max), with no optimizer step at all: no warning (the suite would fail on one)."""
    ours, opt = fitting(kind)
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.8)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, [2, 2, 5], gamma=0.3) if kind == "multisteplr" \
        else torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=9)
    for epoch in range(12):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ours.after_epoch(epoch)
        ref_opt.step()
        ref.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
    assert opt.param_groups[0]["lr"] != pytest.approx(0.8)


def test_schedule_keeps_each_groups_base_rate():
    w, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    schedule = LRSchedule(opt, milestones=[1], gamma=0.5)
    schedule.step()
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.05]
