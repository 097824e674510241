"""Every baseline's ``best`` section resolves through ``app.config.parse_args`` to the values written."""
from __future__ import annotations

import os

import pytest
import yaml

from app.config import parse_args
from tests.conftest import ROOT

BASELINES = ["sgd", "er", "derpp", "ewc_on", "lwf_mc", "l2p", "coda_prompt", "slca", "ranpac",
             "task_arithmetic", "joint", "apt"]


def _as_text(value) -> str:
    value = ",".join(map(str, value)) if isinstance(value, list) else int(value) if isinstance(value, bool) else value
    return str(float(value)) if isinstance(value, float) else str(value)


def _sections(method: str) -> list[tuple[str, str | None, dict]]:
    """(dataset, buffer size or None, expected values) of every best section of models/config/<method>.yaml."""
    with open(os.path.join(ROOT, "models", "config", f"{method}.yaml")) as fh:
        data = yaml.safe_load(fh)
    out = []
    for dataset, section in data.items():
        nested = {str(k): v for k, v in section.items() if str(k).isdigit() and isinstance(v, dict)}
        plain = {k: v for k, v in section.items() if str(k) not in nested}
        out += [(dataset, size, {**plain, **values}) for size, values in nested.items()] or [(dataset, None, plain)]
    return out


@pytest.mark.parametrize("method", BASELINES)
def test_best_sections_resolve_to_the_values_written(method):
    sections = _sections(method)
    assert "seq-cifar100-224" in {d for d, _, _ in sections}
    for dataset, size, values in sections:
        argv = ["--model", method, "--dataset", dataset, "--model_config", "best"]
        args = parse_args(argv + (["--buffer_size", size] if size else []))
        for key, value in values.items():
            got = getattr(args, key)
            assert _as_text(got) == _as_text(value if not isinstance(got, float) else float(value)), \
                (method, dataset, key, got, value)


@pytest.mark.parametrize("method", BASELINES)
def test_every_value_names_its_source(method):
    with open(os.path.join(ROOT, "models", "config", f"{method}.yaml")) as fh:
        lines = fh.read().splitlines()
    values = [line for line in lines if line.startswith("  ") and not line.strip().endswith(":")]
    assert values and all("#" in line for line in values), [line for line in values if "#" not in line]
    header = "\n".join(line for line in lines if line.startswith("#"))
    assert "seq-imagenet-r" in header  # says why there is no seq-imagenet-r section


def test_dataset_config_of_a_best_section_is_applied():
    """l2p's best selects Mammoth's l2p dataset YAML: no normalisation, batch 128, and the user still wins."""
    args = parse_args(["--model", "l2p", "--dataset", "seq-cifar100-224", "--model_config", "best"])
    assert args.dataset_config == "l2p" and args.batch_size == 128 and args.lr == 0.03
    args = parse_args(["--model", "l2p", "--dataset", "seq-cifar100-224", "--model_config", "best", "--lr", "0.1"])
    assert args.lr == 0.1
