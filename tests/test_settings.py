"""Typed per-method settings (utils/settings.py) and the loop's protocols (utils/protocols.py)."""
import dataclasses

import pytest
import torch

from app.config import parse_args
from app.experiment import build_experiment
from models import MODELS
from tests.conftest import make_npz, tiny_run_args
from utils.args import RUN_FLAGS, positive_int
from utils.protocols import LoopDataset, LoopModel
from utils.settings import add_settings_flags, setting, settings_from_args

BASE = ["--dataset", "seq-cifar10", "--lr", "0.1"]


@pytest.mark.parametrize("name", [n for n in MODELS.names() if MODELS.get(n).SETTINGS is not None])
def test_each_settings_field_is_a_flag_and_arrives_typed(name):
    cls = MODELS.get(name)
    args = parse_args(["--model", name, *BASE])
    settings = settings_from_args(cls.SETTINGS, args)
    for f in dataclasses.fields(cls.SETTINGS):
        expected = cls.DEFAULTS.get(f.name, f.metadata["default"])  # the flag's default (or the model's, e.g. iel)
        if f.name == "minibatch_size" and expected is None:  # resolved as Mammoth does: the batch size
            expected = args.batch_size
        if f.name == "fisher_precision":  # auto, resolved by the model for the run's device (the CPU here)
            assert expected == "auto"
            expected = "fp32"
        assert getattr(settings, f.name) == expected, f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(settings, dataclasses.fields(cls.SETTINGS)[0].name, 0)


def test_every_model_with_own_flags_has_typed_settings():
    """A model's flags are exactly its settings' fields (no flag added beside the dataclass)."""
    import argparse
    typed = {n for n in MODELS.names() if MODELS.get(n).SETTINGS}
    assert {"slca", "ranpac", "ewc-on", "lwf-mc", "er", "der", "derpp", "l2p", "dualprompt", "coda-prompt", "inflora",
            "seed", "simplecil", "apt"} <= typed
    for name in typed:
        cls = MODELS.get(name)
        parser = argparse.ArgumentParser()
        cls.get_parser(parser)
        flags = {a.dest for a in parser._actions if a.dest != "help"}
        assert flags >= {f.name for f in dataclasses.fields(cls.SETTINGS)}, name
    for name in ("sgd", "joint", "task-arithmetic", "tmc"):  # no method flags: nothing to type
        parser = argparse.ArgumentParser()
        MODELS.get(name).get_parser(parser)
        assert [a.dest for a in parser._actions] == ["help"], name


def test_command_line_values_reach_model_settings(tmp_path):
    path = make_npz(str(tmp_path / "d.npz"))
    args = parse_args(["--model", "slca", *tiny_run_args(path, tmp_path), "--ca_epochs", "3",
                       "--milestones", "4,2", "--ca_covariance", "diag"])
    model = build_experiment(args, torch.device("cpu")).model
    assert (model.settings.ca_epochs, model.settings.milestones, model.settings.ca_covariance) == (3, [2, 4], "diag")
    assert model.args.ca_epochs == 3  # self.args stays (Mammoth's model files use it)
    assert isinstance(model, LoopModel) and isinstance(build_experiment(args).dataset, LoopDataset)


def test_declaration_errors_and_run_flags():
    import argparse

    @dataclasses.dataclass(frozen=True)
    class Good:
        chunk: int = setting(8, positive_int, "chunk size", changes_results=False)
        items: list = setting([1], list, "a list default is copied per instance")

    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Good)
    assert "chunk" in RUN_FLAGS
    a, b = Good(), Good()
    assert a.items == [1] and a.items is not b.items
    assert settings_from_args(Good, parser.parse_args(["--chunk", "3"])).chunk == 3

    @dataclasses.dataclass
    class Bad:
        x: int = 1

    with pytest.raises(TypeError, match="utils.settings.setting"):
        add_settings_flags(argparse.ArgumentParser(), Bad)
    assert settings_from_args(Good, argparse.Namespace(items=[2])) == Good(chunk=8, items=[2])  # defaults fill in
