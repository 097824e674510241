"""The last training batch of a task: never a batch of one (BatchNorm in training mode), ``--drop_last`` as in Mammoth."""
import numpy as np
import pytest
import torch

from models.sgd import Sgd
from tests.conftest import tiny_run_args
from utils import distributed
from utils.distributed import ShardedBatchSampler
from app.runner import run


def batch_sizes(n, batch_size, drop_last=False, world=1, rank=0, monkeypatch=None):
    if world > 1:
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        monkeypatch.setattr(distributed, "rank", lambda: rank)
    sampler = ShardedBatchSampler(n, batch_size, shuffle=True, seed=3, drop_last=drop_last)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    return [len(b) for b in batches], sorted(i for b in batches for i in b)


@pytest.mark.parametrize("n, drop_last, expected", [
    (9, False, [4, 5]),        # k*B+1: the single last sample joins the previous batch
    (10, False, [4, 4, 2]),    # a last batch of two is kept
    (8, False, [4, 4]),
    (9, True, [4, 4]),         # --drop_last 1 (Mammoth): the incomplete batch is dropped
    (1, False, [2]),           # a one-sample task: the sample twice (a batch of one would fail BatchNorm)
    (2, False, [2]),           # the only batch of the pass is kept
    (3, True, []),
])
def test_single_process_batches(n, drop_last, expected):
    sizes, seen = batch_sizes(n, 4, drop_last)
    assert sizes == expected
    if not drop_last and n > 1:
        assert seen == list(range(n))  # every sample once per pass


def test_ddp_ranks_never_get_a_batch_of_one(monkeypatch):
    """2 ranks, 2*4+3 samples: the last global batch of 3 (one rank would get 1) is merged into the previous one."""
    per_rank = [batch_sizes(11, 4, world=2, rank=r, monkeypatch=monkeypatch) for r in range(2)]
    assert [p[0] for p in per_rank] == [[2, 4], [2, 3]]
    assert sorted(per_rank[0][1] + per_rank[1][1]) == list(range(11))
    assert batch_sizes(12, 4, world=2, rank=1, monkeypatch=monkeypatch)[0] == [2, 2, 2]


def write_tasks_of(path, n_per_task, n_tasks=2, size=16):
    """``n_tasks`` tasks of one class each, ``n_per_task`` training images per task."""
    rng = np.random.RandomState(0)
    y = np.repeat(np.arange(n_tasks), n_per_task)
    x = rng.randint(0, 255, size=(len(y), size, size, 3)).astype(np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=x[::3], y_test=y[::3])
    return str(path)


@pytest.fixture
def one_thread():
    """Tiny convolutions are much faster on one thread on a loaded machine (and never slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_batchnorm_backbone_trains_on_k_batches_plus_one(tmp_path, monkeypatch, one_thread):
    """EfficientNet-Lite0 (BatchNorm, training mode) on tasks of 2*4+1 images with --batch_size 4.

    Without the merge the last batch holds one image and BatchNorm fails ("Expected more than 1 value
    per channel when training"): the spatial size is 1x1 after the stem's strides on 16x16 inputs.
    """
    seen = []
    original = Sgd.observe

    def observe(self, inputs, labels, not_aug_inputs, epoch=None):
        assert self.net.training
        seen.append(inputs.shape[0])
        return original(self, inputs, labels, not_aug_inputs, epoch)
    monkeypatch.setattr(Sgd, "observe", observe)
    data = write_tasks_of(tmp_path / "d.npz", 9)
    argv = tiny_run_args(data, tmp_path, "--results_file", str(tmp_path / "r.json"), "--plots", "0")
    cut = argv.index("--backbone")
    argv = argv[:cut] + argv[cut + 8:]  # drop the tiny-ViT flags
    results = run(["--model", "sgd", *argv, "--backbone", "efficientnet_lite0", "--pretrained", "0"])
    assert results["complete"]
    assert seen == [4, 5, 4, 5]  # two tasks, one epoch each; the default --drop_last 0 keeps every image
