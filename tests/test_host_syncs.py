"""At most one device-to-host sync per optimizer step of second_order (the logged loss, on logging steps only).

On a CPU nothing really synchronises, so the test counts the calls that *would* sync on a GPU: ``Tensor.item``,
``__bool__``, ``__float__``, ``__int__``, ``__index__``, ``tolist``, ``numpy``, ``nonzero`` and ``__format__``,
made from this project's code (torch's own internals, e.g. the CPU step counter of a non-fused AdamW, are not
project syncs; on CUDA the optimizer is fused), except the samplers' shuffling of CPU index tensors.
"""
import os
import sys

import pytest
import torch

from models.second_order_utils import penalties as pen
from models.second_order_utils import stepping
from tests.test_second_order_model import argv_for, build
from utils.errors import TrainingDiverged
from utils.training import run_epochs

SYNCING = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "nonzero", "__format__")
TORCH_DIR = os.path.dirname(torch.__file__)


class SyncCounter:
    """Counts syncing Tensor calls whose caller is outside torch."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in SYNCING:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(original))

    def _wrap(self, original):
        def counted(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            host_side = isinstance(frame.f_locals.get("self"), torch.utils.data.Sampler)  # CPU index shuffling
            if not frame.f_code.co_filename.startswith(TORCH_DIR) and not host_side:
                self.count += 1
            return original(tensor, *args, **kwargs)
        return counted


@pytest.mark.parametrize("extra", [("--alpha_ita", "1"), ("--use_iel", "1", "--beta_iel", "1"),
                                   ("--alpha_ita", "1", "--penalty_step", "coupled", "--virtual_bs_n", "2")])
def test_one_sync_per_logging_step_and_none_in_the_step(tmp_path, monkeypatch, extra):
    args, dataset, model = build(argv_for(tmp_path, *extra, per_class=12))
    args.n_epochs = 2
    loader, _ = dataset.get_data_loaders()
    model.net.train()
    model.meta_begin_task(dataset)
    model.LOG_EVERY = 4
    steps_per_epoch = len(loader)
    assert steps_per_epoch == 6
    counter = SyncCounter(monkeypatch)
    per_step = []
    real_observe = model.meta_observe

    def observe(*a, **k):
        before = counter.count
        out = real_observe(*a, **k)
        per_step.append(counter.count - before)
        return out
    model.meta_observe = observe
    steps_before = model.opt.state_dict()
    run_epochs(model, dataset, args, loader, 0)
    monkeypatch.undo()
    assert len(per_step) == 2 * steps_per_epoch and per_step == [0] * len(per_step)  # the step itself: none
    reads = 2 * (len(range(0, steps_per_epoch, 4)) + 1)  # logging steps 0 and 4, plus the end of each epoch
    # a batched virtual step hands back the float 0.0 before its first step: that read costs nothing
    assert reads - 1 <= counter.count <= reads
    assert model.opt.state_dict() != steps_before  # steps really happened
    assert isinstance(model.last_penalties["adapter"], torch.Tensor)


def test_non_finite_tensor_loss_names_the_first_bad_step(tmp_path, monkeypatch):
    args, dataset, model = build(argv_for(tmp_path, "--alpha_ita", "1", per_class=12))
    loader, _ = dataset.get_data_loaders()
    model.meta_begin_task(dataset)
    losses = iter([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(float("inf")), torch.tensor(float("nan")),
                   torch.tensor(1.0), torch.tensor(1.0)])
    monkeypatch.setattr(model, "observe", lambda *a, **k: next(losses))
    with pytest.raises(TrainingDiverged, match="loss is inf at task 1, epoch 1, step 3;"):
        run_epochs(model, dataset, args, loader, 0)


def test_branch_free_clip_equals_the_reference_clip():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 7, generator=gen) * s for s in (0.01, 1.0, 100.0)]
    expected = []
    for g in grads:  # the reference: rescale only when the norm exceeds the bound
        norm = float(g.norm())
        expected.append(g * (3.0 / (norm + 1e-6)) if norm + 1e-6 > 3.0 else g.clone())
    out = stepping.clip_per_tensor_([g.clone() for g in grads], 3.0)
    for o, e in zip(out, expected):
        assert torch.allclose(o, e, rtol=1e-6, atol=0)
    for g, e in zip(grads, expected):
        assert torch.allclose(pen.clip_norm(g, 3.0), e, rtol=1e-6, atol=0)


# ----- on the suite's test accelerator (tests/accelerator_backend.py): real copies between host and device ---------
LOG_EVERY = 4
ACC_LINE = ["--dataset", "seq-cifar100-224", "--model_config", "best", "--device", "testacc", "--seed", "0", "--n_epochs", "2", "--stop_after", "1", "--non_verbose", "--num_workers", "0",
            "--gpu_augmentation", "auto", "--virtual_bs_n", "2", "--plots", "0", "--disable_log", "1"]
BATCH_UPLOADS = 3  # the images (in the device-augmenting loader), the labels and the not-augmented images


@pytest.mark.timeout(900)
@pytest.mark.parametrize("extra", [("--model", "second_order"), ("--model", "iel", "--tuning_style", "full",
                                                                   "--precision", "bf16")],
                         ids=["ita-lora", "iel-full-bf16"])
def test_no_copy_or_sync_in_the_accelerator_step_outside_logging(tmp_path, extra):
    """Per training step of second_order with device augmentation on the test accelerator: the batch's uploads
    and nothing else (no copy to the host, no value read, no data-dependent shape, no copy of a constant); on the
    step after a logging step, at most one read (the logged loss)."""
    import json
    import subprocess

    from tests.accelerator_launch import ROOT, prepare
    from tests.conftest import SHARED_DATA, shared_missing

    data = os.path.join(SHARED_DATA, "cifar100_mini.npz")
    if not os.path.isfile(data):
        shared_missing(data)
    env = prepare(str(tmp_path), data)
    out = tmp_path / "steps.json"
    proc = subprocess.run([sys.executable, "-m", "tests.accelerator_launch", "--steps", str(LOG_EVERY), str(out),
                           *ACC_LINE, "--base_path", str(tmp_path / "data"), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as fh:
        report = json.load(fh)
    steps = report["steps"]
    assert len(steps) >= 2 * 8 and report["augmented"] >= len(steps) and report["optimizer_state"]
    assert sum(step["counts"].get("to_host", 0) for step in steps) >= len(steps) // LOG_EVERY - 2  # reads happen
    first = steps[0]["counts"]  # the run's first step also caches the augmentation's constants on the device (2)
    assert first.get("to_device", 0) <= BATCH_UPLOADS + 2 and not first.get("to_host") and not first.get("syncs")
    for n, step in enumerate(steps[1:], 1):
        counts, after_logging = step["counts"], (step["index"] - 1) % LOG_EVERY == 0 and step["index"] > 0
        where = f"step {n} (index {step['index']} in its epoch): {step['sites']}"
        assert counts.get("to_device", 0) == BATCH_UPLOADS, where
        # the logged loss: one read on the step after a logging step (none while it is still the float 0.0 of a
        # virtual batch that has not stepped yet), never elsewhere
        assert counts.get("to_host", 0) <= (1 if after_logging else 0), where
        assert counts.get("syncs", 0) == 0 and counts.get("synchronize", 0) == 0, where
