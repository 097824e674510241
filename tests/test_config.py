"""Configuration layers, their precedence, and one-line errors for bad input."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from app import config
from app.config import parse_args
from utils.errors import UserError


@pytest.fixture
def cfg_dirs(tmp_path, monkeypatch):
    models_dir, datasets_dir = tmp_path / "models", tmp_path / "datasets"
    (datasets_dir / "seq-cifar10").mkdir(parents=True)
    models_dir.mkdir()
    monkeypatch.setattr(config, "MODEL_CONFIG_DIR", str(models_dir))
    monkeypatch.setattr(config, "DATASET_CONFIG_DIR", str(datasets_dir))
    return models_dir, datasets_dir / "seq-cifar10"


BASE = ["--model", "sgd", "--dataset", "seq-cifar10"]


def test_dataset_defaults_fill_unset_flags(cfg_dirs):
    args = parse_args(BASE + ["--lr", "0.1"])
    assert (args.n_epochs, args.batch_size, args.backbone) == (50, 32, "resnet18")
    assert args.optimizer == "sgd" and args.optim_mom == 0.0


def test_precedence_of_all_layers(cfg_dirs):
    models_dir, ds_dir = cfg_dirs
    (ds_dir / "default.yaml").write_text("n_epochs: 7\nbatch_size: 11\noptim_wd: 0.5\nlr: 0.2\n")
    (models_dir / "sgd.yaml").write_text("default:\n  batch_size: 13\n  lr: 0.3\n"
                                         "seq-cifar10:\n  lr: 0.4\n  optim_mom: 0.9\n")
    args = parse_args(BASE)
    assert (args.n_epochs, args.batch_size, args.optim_wd, args.lr) == (7, 13, 0.5, 0.3)  # default section
    args = parse_args(BASE + ["--model_config", "best"])
    assert (args.lr, args.optim_mom, args.batch_size) == (0.4, 0.9, 13)  # dataset section over default
    args = parse_args(BASE + ["--model_config", "best", "--lr", "0.01", "--n_epochs", "2"])
    assert (args.lr, args.n_epochs, args.optim_mom) == (0.01, 2, 0.9)  # the command line wins


def test_model_config_selects_dataset_config(cfg_dirs):
    models_dir, ds_dir = cfg_dirs
    (ds_dir / "special.yaml").write_text("n_epochs: 3\nN_TASKS: 2\nN_CLASSES_PER_TASK: 5\n")
    (models_dir / "sgd.yaml").write_text("seq-cifar10:\n  dataset_config: special\n  lr: 0.1\n")
    args = parse_args(BASE + ["--model_config", "best"])
    assert args.n_epochs == 3
    assert args.dataset_structure == {"N_TASKS": 2, "N_CLASSES_PER_TASK": 5}


@pytest.mark.parametrize("yaml_text, message", [
    ("n_epoch: 3\n", "unknown key 'n_epoch'"),
    ("n_epochs: -1\n", "bad value -1 for 'n_epochs'"),
    ("optimizer: rmsprop\n", "bad value 'rmsprop' for 'optimizer'"),
    ("N_TASK: 3\n", "unknown structure key 'N_TASK'"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_dataset_yaml(cfg_dirs, yaml_text, message):
    (cfg_dirs[1] / "default.yaml").write_text(yaml_text)
    with pytest.raises(UserError, match=message):
        parse_args(BASE + ["--lr", "0.1"])


def test_bad_model_yaml_key_names_the_file_and_suggests(cfg_dirs):
    (cfg_dirs[0] / "sgd.yaml").write_text("default:\n  optim_momentum: 0.9\n")
    with pytest.raises(UserError, match=r"unknown key 'optim_momentum' in .*sgd.yaml.*did you mean: optim_mom"):
        parse_args(BASE + ["--lr", "0.1"])


def test_best_without_section(cfg_dirs):
    (cfg_dirs[0] / "sgd.yaml").write_text("seq-mnist:\n  lr: 0.1\n")
    with pytest.raises(UserError, match="has no section for 'seq-cifar10'"):
        parse_args(BASE + ["--model_config", "best"])


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr: expected a number > 0"),
    (["--lr", "0.1", "--n_epochs", "0"], "--n_epochs: expected an integer >= 1"),
    (["--lr", "0.1", "--validation", "100"], "--validation: expected a percentage in"),
    (["--lr", "0.1", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--lr", "0.1", "--lrr", "3"], "unrecognized arguments: --lrr 3 .*did you mean: --lr"),
    (["--lr", "0.1", "--lr", "0.2"], "--lr is given twice"),
    (["--lr", "0.1", "--permute_classes", "maybe"], "expected a boolean"),
    ([], "--lr is required"),
    (["--lr", "0.1", "--dataset_config", "nope"], "unknown --dataset_config 'nope'"),
])
def test_bad_flags(cfg_dirs, argv, message):
    with pytest.raises(UserError, match=message):
        parse_args(BASE + argv)


def test_boolean_flags_parse_explicitly(cfg_dirs):
    assert parse_args(BASE + ["--lr", "1", "--permute_classes", "0"]).permute_classes is False
    assert parse_args(BASE + ["--lr", "1", "--permute_classes", "true"]).permute_classes is True
    assert parse_args(BASE + ["--lr", "1", "--non_verbose"]).non_verbose is True


def test_names_are_normalised(cfg_dirs):
    args = parse_args(["--model", "SGD", "--dataset", "seq_cifar10", "--lr", "0.1"])
    assert (args.model, args.dataset) == ("sgd", "seq-cifar10")


def test_unknown_names_list_the_closest():
    with pytest.raises(UserError, match=r"unknown dataset 'seq-cifar01' \(did you mean: seq-cifar10"):
        parse_args(["--model", "sgd", "--dataset", "seq-cifar01", "--lr", "0.1"])
    with pytest.raises(UserError, match=r"unknown backbone 'resnet81' \(did you mean: resnet18"):
        parse_args(BASE + ["--lr", "0.1", "--backbone", "resnet81"])


def test_backbone_flags_come_from_the_factory_signature(cfg_dirs):
    args = parse_args(BASE + ["--lr", "0.1", "--num_filters", "20"])
    assert args.num_filters == 20
    args = parse_args(BASE + ["--lr", "0.1", "--backbone", "vit_tiny", "--depth", "2", "--patch_size", "4"])
    assert (args.depth, args.patch_size, args.embed_dim) == (2, 4, 128)


def test_cli_help_and_one_line_errors():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "main.py", "--model", "joint", "--dataset", "seq-custom", "--help"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "--data_path" in out.stdout and "--optim_mom" in out.stdout
    bad = subprocess.run([sys.executable, "main.py", "--model", "nope", "--dataset", "seq-cifar10"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("error: unknown model 'nope'")
    assert "Traceback" not in bad.stderr
