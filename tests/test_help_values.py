"""``--help`` with a model and dataset shows, for each flag a configuration layer sets, the value the run will use
and the layer that set it (not the argparse default)."""
import re

import pytest

from app.config import parse_args


def help_text(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(list(argv) + ["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def flag_help(text, flag):
    """The help entry of one flag (its lines up to the next entry), whitespace collapsed."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(rf"  {re.escape(flag)}\b", line))
    end = next((i for i in range(first + 1, len(lines)) if not lines[i].startswith("   ")), len(lines))
    return re.sub(r"\s+", " ", " ".join(lines[first:end]))


PUBLISHED = ["--model", "second_order", "--dataset", "seq-cifar100-224", "--model_config", "best"]


def test_published_line_shows_the_resolved_values_and_their_layers(capsys):
    text = help_text(capsys, *PUBLISHED)
    assert "(value: in21k, from second_order defaults)" in flag_help(text, "--pretrain_type")
    assert "in21k-ft-in1k)" not in flag_help(text, "--pretrain_type").split("{")[-1].split("}")[-1]
    assert "(value: 0.0003, from models/config/second_order.yaml [best])" in flag_help(text, "--lr")
    assert "(value: 0.02, from models/config/second_order.yaml [best])" in flag_help(text, "--alpha_ita")
    assert "(default: 0.0)" not in flag_help(text, "--alpha_ita")
    assert "(default: 0.0)" in flag_help(text, "--beta_iel")  # no layer sets it: the argparse default stays


def test_the_run_uses_the_values_help_shows(capsys):
    text = help_text(capsys, *PUBLISHED)
    args = parse_args(PUBLISHED)
    for flag in ("pretrain_type", "lr", "alpha_ita", "n_epochs", "batch_size", "optimizer"):
        shown = re.search(r"\(value: ([^,]+), from", flag_help(text, f"--{flag}")).group(1)
        assert shown == str(getattr(args, flag)), flag


def test_dataset_config_and_command_line_layers(capsys):
    text = help_text(capsys, *PUBLISHED, "--dataset_config", "coda_prompt", "--lr", "0.1")
    assert "(value: 0.1, from the command line)" in flag_help(text, "--lr")
    args = parse_args([*PUBLISHED, "--dataset_config", "coda_prompt"])
    layer = re.search(r"\(value: [^,]+, from ([^)]+)\)", flag_help(text, "--batch_size")).group(1)
    expected = "models/config/second_order.yaml [best]" if args.batch_size != 128 else \
        "datasets/configs/seq-cifar100-224/coda_prompt.yaml"
    assert layer == expected
