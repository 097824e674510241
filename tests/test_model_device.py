"""Every tensor a model creates lives on the model's device, for every registered model, before and after a resume.

A CPU-only machine cannot put the model on a second real device, so the default device is moved instead:
:class:`tests.device_mode.DefaultDeviceMode` makes ``meta`` the default device of code under ``models/`` while the
model and its data stay on the CPU (the situation of a CUDA model whose code creates a CPU tensor). Any op that
then mixes the two devices raises, and the sweep finds misplaced tensors the model only stores.
"""
import io

import pytest
import torch

from backbone import get_backbone
from benchmarks.compare import merge_flags
from datasets import get_dataset
from models import MODELS, get_model_class
from tests.conftest import EXTRA_FLAGS, make_npz, tiny_run_args
from tests.device_mode import (DefaultDeviceMode, on_default_device, plain,
                                stray_tensors)
from app.config import parse_args
from utils.device_audit import misplaced_tensors
from app.experiment import set_random_seed
from utils.training import RunRecord, train

# the tiny-run flags of every model (one table, shared with the end-to-end matrix), plus the module types, both
# modes and bf16 for the second-order family
DEVICE_FLAGS = {**EXTRA_FLAGS, "iel": [*EXTRA_FLAGS["iel"], "--tuning_style", "ia3"],
                "second_order": [*EXTRA_FLAGS["second_order"], "--alpha_ita", "1", "--beta_iel", "1",
                                 "--tuning_style", "full", "--use_iel", "1", "--precision", "bf16"]}
NAMES = sorted({MODELS.get(name).NAME: name for name in MODELS.names()}.values())  # one case per model, not per alias
CASES = [(name, DEVICE_FLAGS.get(MODELS.get(name).NAME, [])) for name in NAMES]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("dev") / "d.npz"), n_classes=4, per_class=6)


def build(argv):
    args = parse_args(argv)
    set_random_seed(0)
    dataset = get_dataset(args)
    net = get_backbone(args, dataset.N_CLASSES, dataset.img_size, dataset.IN_CHANS)
    model = get_model_class(args.model)(net, dataset.get_loss(), args, dataset.get_transform(), dataset=dataset)
    return args, dataset, model.to("cpu")


def assert_on_cpu(model, when):
    bad = misplaced_tensors(model, torch.device("cpu")) + stray_tensors(model)
    assert not bad, f"{when}: {bad}"


@pytest.mark.parametrize("name, extra", CASES, ids=[" ".join([c[0], *c[1][-4:]]) for c in CASES])
def test_model_creates_every_tensor_on_its_device(name, extra, data, tmp_path):
    argv = ["--model", name, *merge_flags(tiny_run_args(data, tmp_path, n_tasks=2), ["--debug_mode", "1"], extra)]
    args, dataset, model = build(argv)
    saved = []

    def keep_checkpoint(record):
        if record.tasks_done == 1:
            buf = io.BytesIO()
            torch.save(plain({"model": model.checkpoint_state(), "record": record.to_dict()}), buf)
            saved.append(buf.getvalue())
        assert_on_cpu(model, f"after task {record.tasks_done}")

    with DefaultDeviceMode() as mode:
        train(model, dataset, args, on_task_end=keep_checkpoint)
    assert_on_cpu(model, "end of the run")

    args, dataset, resumed = build(argv)  # a fresh process resuming after task 1
    state = on_default_device(torch.load(io.BytesIO(saved[0]), map_location="cpu", weights_only=True))
    record = RunRecord.from_dict(state["record"])
    with DefaultDeviceMode() as mode_resumed:
        dataset.get_data_loaders()
        resumed.load_checkpoint_state(state["model"], dataset)
        assert_on_cpu(resumed, "after loading the checkpoint")
        train(resumed, dataset, args, record)
    assert_on_cpu(resumed, "end of the resumed run")
    assert record.tasks_done == 2
    if name in ("ita", "iel", "second-order"):  # the mode really redirected model code (not a vacuous pass)
        assert mode.created and mode_resumed.created


def test_the_audit_sees_the_gmms_which_live_on_the_device():
    """The GMMs are fitted and sampled on the model's device: one left on another device is reported."""
    from models.second_order_utils.pretuning import DiagonalGMM
    gmm = DiagonalGMM(torch.ones(2) / 2, torch.zeros(2, 3), torch.ones(2, 3))
    found = misplaced_tensors({"gmms": {0: gmm}}, torch.device("meta"))
    assert found == ["model['gmms'][0].weights on cpu", "model['gmms'][0].means on cpu",
                     "model['gmms'][0].variances on cpu"]
    assert misplaced_tensors({"gmms": {0: gmm}}, torch.device("cpu")) == []
