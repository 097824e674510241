"""The training-loop template: ContinualModel.train_task (overridden by joint), and eval_mode."""
import pytest
import torch
from torch import nn

from app.config import parse_args
from app.experiment import build_experiment
from tests.conftest import make_npz, tiny_run_args
from utils.modes import eval_mode
from utils.training import train


def test_joint_trains_each_task_from_the_initial_weights_on_the_union(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=4)
    experiment = build_experiment(parse_args(["--model", "joint", *tiny_run_args(path, tmp_path, n_tasks=3)]),
                                  torch.device("cpu"))
    model = experiment.model
    initial = {k: v.clone() for k, v in model.net.state_dict().items()}
    seen, starts = [], []
    observe = model.observe

    def spy(x, y, *a, **k):
        if not any(t == model.current_task for t, _ in seen):  # the first step of a task
            starts.append([model.net.state_dict()[k].clone() for k in initial])
        seen.append((model.current_task, y.tolist()))
        return observe(x, y, *a, **k)

    model.observe = spy
    train(model, experiment.dataset, experiment.args)
    for task in range(3):
        labels = sorted(label for t, batch in seen if t == task for label in batch)
        assert labels == sorted(list(range(2 * task + 2)) * 4)  # every training image of tasks 0..task, once
    assert len(starts) == 3
    for state in starts[1:]:  # each task starts again from the initial weights
        assert all(torch.equal(a, b) for a, b in zip(state, initial.values()))


def test_eval_mode_restores_the_mode_also_on_errors():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    with eval_mode(net):
        assert not net.training and not net[1].training
    assert net.training and net[1].training
    net.eval()
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert not net.training
    net.train()
    with pytest.raises(RuntimeError):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert net.training and net[1].training
