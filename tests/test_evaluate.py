import torch
from torch import nn

from tests.conftest import make_npz
from datasets import get_dataset
from app.config import parse_args
from utils.evaluate import evaluate


class FixedLogits(nn.Module):
    """Predicts from the image's mean brightness a fixed logit vector (known answers)."""

    def __init__(self, logits_by_label):
        super().__init__()
        self.table = logits_by_label
        self.device = torch.device("cpu")

    def forward(self, x):
        # make_npz: class c has brightness ~ c * 66 / 255 (before normalisation 'none')
        label = (x.mean(dim=(1, 2, 3)) * 255 / 66).floor().clamp(0, 3).long()
        return self.table[label]

    def autocast(self):
        import contextlib
        return contextlib.nullcontext()

    def get_debug_iters(self):
        return 5


def test_class_il_vs_task_il(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=4)
    args = parse_args(["--model", "sgd", "--dataset", "seq-custom", "--data_path", path, "--n_tasks", "2",
                       "--lr", "0.1", "--batch_size", "3", "--normalization", "none"])
    ds = get_dataset(args)
    # every sample of task 0 (labels 0,1) is confused with class 3 of task 1 in class-IL,
    # but is right in task-IL; task 1's samples are always right
    table = torch.tensor([[2.0, 0.0, 0.0, 5.0],
                          [0.0, 2.0, 0.0, 5.0],
                          [0.0, 0.0, 9.0, 0.0],
                          [0.0, 0.0, 0.0, 9.0]])
    model = FixedLogits(table)
    ds.get_data_loaders()
    cil, til = evaluate(model, ds)
    assert cil == [100.0] and til == [100.0]  # only classes 0..1 visible after task 0
    ds.get_data_loaders()
    cil, til = evaluate(model, ds)
    assert cil == [0.0, 100.0] and til == [100.0, 100.0]
