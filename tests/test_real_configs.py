"""The shipped YAML files parse through the real configuration layers, and their values arrive in the args."""
import glob
import os

import pytest
import yaml

from app.config import DATASET_CONFIG_DIR, MODEL_CONFIG_DIR, _coerce, build_parser, parse_args
from datasets import DATASETS
from models import MODELS
from tests.conftest import ROOT
from tests.conftest import read_file

MODEL_SECTIONS = [(os.path.splitext(os.path.basename(path))[0], section)
                  for path in sorted(glob.glob(os.path.join(MODEL_CONFIG_DIR, "*.yaml")))
                  for section in yaml.safe_load(read_file(path)) if section != "default"]
DATASET_FILES = sorted(glob.glob(os.path.join(DATASET_CONFIG_DIR, "*", "*.yaml")))


def test_the_shipped_files_are_found():
    assert ("second_order", "seq-cifar100-224") in MODEL_SECTIONS and len(DATASET_FILES) >= 4


@pytest.mark.parametrize("model, section", MODEL_SECTIONS)
def test_every_best_section_parses_and_applies(model, section):
    values = yaml.safe_load(read_file(os.path.join(MODEL_CONFIG_DIR, f"{model}.yaml")))[section]
    args = parse_args(["--model", model, "--dataset", section, "--model_config", "best"])
    parser = build_parser(MODELS.get(model), DATASETS.get(section), args.backbone)
    for key, value in values.items():
        if isinstance(value, dict):
            continue  # per-buffer-size subsections
        assert getattr(args, key) == _coerce(parser, key, value, "test"), key  # the YAML value, as its flag parses it
    if "dataset_config" in values:  # the dataset YAML it names is applied too
        ds_values = yaml.safe_load(read_file(os.path.join(DATASET_CONFIG_DIR, section, values["dataset_config"] + ".yaml")))
        structure = {k: v for k, v in ds_values.items() if k.isupper()}
        assert args.dataset_structure == structure


@pytest.mark.parametrize("path", DATASET_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_dataset_yaml_parses_and_builds_its_split(path):
    dataset = os.path.basename(os.path.dirname(path))
    name = os.path.splitext(os.path.basename(path))[0]
    values = yaml.safe_load(read_file(path)) or {}
    args = parse_args(["--model", "sgd", "--dataset", dataset, "--dataset_config", name, "--lr", "0.1"])
    for key, value in values.items():
        if key.isupper():
            assert args.dataset_structure[key] == value
        else:
            assert getattr(args, key) == value, key
    instance = DATASETS.get(dataset)(args)  # the structure keys produce a consistent class split
    n_tasks = values.get("N_TASKS", instance.N_TASKS)
    assert instance.N_TASKS == n_tasks and instance.get_offsets(n_tasks - 1)[1] == instance.N_CLASSES
