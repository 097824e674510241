"""Domain-IL (rot-mnist, perm-mnist), general-continual (mnist-360), --joint 1, der, and the debug-mode cap."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import functional as TF

from benchmarks.compare import merge_flags
from datasets.mnist_360 import N_DIGITS, ROUNDS, pair_stream
from datasets.utils.debug import DEBUG_IMAGES
from tests.conftest import make_npz, tiny_run_args
from tests.dataset_builders import dataset_for, write_idx_set
from utils.errors import UserError
from app.runner import run


@pytest.fixture(scope="module")
def mnist_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("mnist")
    write_idx_set(str(base / "MNIST" / "raw"), per_class_train=3, per_class_test=2)
    return base


def _raw(ds, split: int = 0) -> torch.Tensor:
    return torch.as_tensor(ds.splits[split].data).float().div(255).unsqueeze(1)


def _rotated(ds, split: int, index: int, angle: float) -> torch.Tensor:
    return TF.to_tensor(TF.rotate(ds.splits[split].image(index), angle))


def test_rot_mnist_same_labels_every_task_and_a_fixed_rotation_per_task(mnist_base):
    ds = dataset_for(mnist_base, "--dataset", "rot-mnist", "--seed", "3")
    assert ds.SETTING == "domain-il" and ds.N_TASKS == 20 and ds.N_CLASSES == 10
    assert all(ds.get_offsets(t) == (0, 10) for t in range(20))
    raw = _raw(ds)
    angles = [ds.angle(t) for t in range(20)]
    assert len(set(angles)) == 20 and all(0 <= a < 180 for a in angles)
    assert angles == [dataset_for(mnist_base, "--dataset", "rot-mnist", "--seed", "3").angle(t) for t in range(20)]
    assert angles != [dataset_for(mnist_base, "--dataset", "rot-mnist", "--seed", "4").angle(t) for t in range(20)]
    for t in (0, 7):
        train = ds.train_dataset(t)
        assert len(train) == len(raw) and sorted(train.targets.tolist()) == sorted(ds.splits[0].targets.tolist())
        x, y, not_aug = train[5]
        assert y == int(ds.splits[0].targets[5]) and not torch.equal(x, raw[5])
        assert torch.equal(x, _rotated(ds, 0, 5, angles[t])) and torch.equal(not_aug, x)
        test_x, _ = ds.test_dataset(t)[1]
        assert torch.equal(test_x, _rotated(ds, 1, 1, angles[t]))


def test_perm_mnist_applies_the_tasks_pixel_permutation(mnist_base):
    ds = dataset_for(mnist_base, "--dataset", "perm-mnist", "--seed", "0")
    raw = _raw(ds).reshape(len(ds.splits[0]), -1)
    perms = [ds.permutation(t) for t in range(3)]
    assert all(sorted(p.tolist()) == list(range(784)) for p in perms) and not np.array_equal(perms[0], perms[1])
    for t in range(3):
        x, _, not_aug = ds.train_dataset(t)[2]
        assert torch.equal(x.reshape(-1), raw[2, perms[t]]) and torch.equal(not_aug, x)


def test_domain_il_joint_is_one_task_with_every_domain(mnist_base):
    ds = dataset_for(mnist_base, "--dataset", "rot-mnist", "--joint", "1")
    assert ds.N_TASKS == 1 and ds.n_domains == 20 and ds.N_CLASSES == 10
    n = len(ds.splits[0])
    train = ds.train_dataset(0)
    assert len(train) == 20 * n and len(ds.test_dataset(0)) == 20 * len(ds.splits[1])
    assert torch.equal(train[3 * n + 4][0], _rotated(ds, 0, 4, ds.angle(3)))


def test_class_il_joint_is_one_task_of_all_classes(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=6, per_class=4)
    res = run(tiny_run_args(data, tmp_path, "--model", "sgd", "--joint", "1", "--plots", "0", n_tasks=3))
    assert res["n_tasks"] == 1 and len(res["accuracy_matrix_class_il"]) == 1
    ds = dataset_for(tmp_path, "--dataset", "seq-custom", "--data_path", data, "--n_tasks", "3", "--joint", "1")
    assert ds.get_offsets(0) == (0, 6) and len(ds.train_dataset(0)) == 24


def test_mnist_360_stream_of_rotating_pairs(mnist_base):
    targets = np.repeat(np.arange(N_DIGITS), 12)
    order, angles = pair_stream(targets, seed=0)
    assert len(order) == len(targets) and len(set(order.tolist())) == len(targets)  # every image once
    start = 0
    for r in range(ROUNDS):
        for first in range(N_DIGITS):
            size = 4  # 12 images per digit in 6 chunks of 2, two digits per segment
            seg = slice(start, start + size)
            assert set(targets[order[seg]].tolist()) == {first, (first + 1) % N_DIGITS}
            assert np.allclose(angles[seg], np.arange(size) * 360.0 / size)
            start += size
    assert start == len(order)
    ds = dataset_for(mnist_base, "--dataset", "mnist-360", "--n_epochs", "1")
    assert ds.SETTING == "general-continual" and ds.N_TASKS == 1 and ds.N_CLASSES == 9
    assert ds.splits[0].targets.max() == 8 and ds.splits[1].targets.max() == 8  # digit 9 left out
    loader, _ = ds.get_data_loaders()
    stream = torch.cat([batch[1] for batch in loader])
    expected_order, _ = pair_stream(ds.splits[0].targets, 0)
    assert stream.tolist() == ds.splits[0].targets[expected_order].tolist()  # in stream order, not shuffled
    with pytest.raises(UserError, match="single-pass stream"):
        dataset_for(mnist_base, "--dataset", "mnist-360", "--n_epochs", "2")


def _trained_weights(data, tmp_path, *flags) -> dict[str, torch.Tensor]:
    from app.config import parse_args
    from app.experiment import build_experiment
    from utils.training import train
    experiment = build_experiment(parse_args(tiny_run_args(data, tmp_path, *flags)), torch.device("cpu"))
    train(experiment.model, experiment.dataset, experiment.args)
    return {k: v.clone() for k, v in experiment.model.net.state_dict().items()}


def test_der_is_derpp_with_beta_zero_and_keeps_only_logits(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    common = ["--buffer_size", "6", "--alpha", "0.5", "--plots", "0"]
    der = _trained_weights(data, tmp_path, "--model", "der", *common)
    derpp = _trained_weights(data, tmp_path, "--model", "derpp", "--beta", "0", *common)
    other = _trained_weights(data, tmp_path, "--model", "derpp", "--beta", "1", *common)
    assert der.keys() == derpp.keys() == other.keys()
    assert all(torch.equal(der[k], derpp[k]) for k in der)  # bitwise the same training
    assert any(not torch.allclose(der[k], other[k]) for k in der)  # the label CE does change it
    from models.der import Der
    from models.utils.buffer import Buffer
    buffer = Buffer(4)
    buffer.add_data(examples=torch.zeros(3, 1, 2, 2), logits=torch.ones(3, 5))
    assert buffer.labels is None and [t.shape for t in buffer.get_data(2)] == [(2, 1, 2, 2), (2, 5)]
    assert not Der.STORES_LABELS


def test_debug_mode_caps_every_pass_in_images(tmp_path, monkeypatch):
    """Training epochs, test loaders and second_order's statistics passes (features, probe, Fisher) all see at
    most DEBUG_IMAGES images, whatever --batch_size / --stats_batch_size are."""
    from datasets.utils.continual_dataset import ContinualDataset
    seen: list[tuple[bool, int]] = []
    make_loader = ContinualDataset.make_loader

    def counting(self, dataset, shuffle, batch_size=None):
        loader = make_loader(self, dataset, shuffle, batch_size)
        seen.append((shuffle, sum(len(batch[1]) for batch in loader)))
        return loader

    monkeypatch.setattr(ContinualDataset, "make_loader", counting)
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=10)
    argv = merge_flags(tiny_run_args(data, tmp_path), ["--model", "second_order", "--stats_batch_size", "64",
                                                       "--batch_size", "2", "--virtual_bs_n", "16", "--plots", "0",
                                                       "--num_samples_align_pretuning", "8",
                                                       "--num_epochs_align_pretuning", "1"])
    run(argv + ["--debug_mode", "1"])
    assert len(seen) >= 8 and max(n for _, n in seen) == DEBUG_IMAGES
    seen.clear()
    run(argv)
    assert max(n for _, n in seen) == 20  # the cap is what limited the passes


def test_second_order_debug_mode_takes_optimizer_steps(tmp_path):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=10)
    argv = merge_flags(tiny_run_args(data, tmp_path), ["--model", "second_order", "--batch_size", "2",
                                                       "--virtual_bs_n", "16", "--debug_mode", "1", "--plots", "0",
                                                       "--savecheck", "last", "--ckpt_name", "dbg"])
    run(argv)
    from utils.checkpoints import load_checkpoint
    import glob
    state = load_checkpoint(sorted(glob.glob(str(tmp_path / "ckpt" / "**" / "*.pt"), recursive=True))[-1])
    lora = [v for k, v in state["model_state"]["model"].items() if ".deltas.0." in k and k.endswith("B")]
    assert lora and any(v.abs().sum() > 0 for v in lora)  # LoRA B starts at zero: only a step moves it
