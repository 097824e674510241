"""Backbone settings are checked when the command line is parsed, from each backbone's ``Limits``."""
from __future__ import annotations

import inspect
import typing

import pytest

import backbone.mlp  # noqa: F401 - registers the backbones
import backbone.resnet  # noqa: F401
import backbone.vit  # noqa: F401
from app.config import parse_args
from backbone import BACKBONES, backbone_flags
from utils.errors import UserError

BASE = ["--model", "sgd", "--dataset", "seq-custom", "--data_path", "x.npz", "--lr", "0.1", "--n_epochs", "1",
        "--batch_size", "2"]


def integer_flags(factory) -> list[str]:
    """The flags of ``factory`` whose values are integers (``int`` or ``Optional[int]``)."""
    hints = typing.get_type_hints(factory)
    out = []
    for name in backbone_flags(factory):
        hint = hints.get(name)
        if hint is int or int in typing.get_args(hint):
            out.append(name)
    return out


def test_every_integer_backbone_flag_has_a_smallest_value():
    for name in BACKBONES.names():
        factory = BACKBONES.get(name)
        unbounded = set(integer_flags(factory)) - set(factory.BACKBONE_LIMITS.minimum)
        assert not unbounded, f"backbone {name}: no smallest value for {sorted(unbounded)}"


@pytest.mark.parametrize("backbone_name, flag", [(n, f) for n in ("vit_tiny", "mnistmlp", "resnet18")
                                                  for f in integer_flags(BACKBONES.get(n))])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_size_below_the_smallest_is_refused_at_parse_time(backbone_name, flag, value):
    with pytest.raises(UserError, match=rf"argument --{flag}: expected an integer >= 1, got '{value}'"):
        parse_args(BASE + ["--backbone", backbone_name, f"--{flag}", value])


def test_heads_must_divide_the_width_and_the_defaults_pass():
    with pytest.raises(UserError, match="--num_heads 3 does not divide --embed_dim 32"):
        parse_args(BASE + ["--backbone", "vit_tiny", "--embed_dim", "32", "--num_heads", "3"])
    args = parse_args(BASE + ["--backbone", "vit_tiny", "--embed_dim", "48", "--num_heads", "3", "--patch_size",
                              "none"])
    assert (args.embed_dim, args.num_heads, args.patch_size) == (48, 3, None)
    for name in BACKBONES.names():  # every backbone's defaults obey its own rules
        defaults = {k: p.default for k, p in inspect.signature(BACKBONES.get(name)).parameters.items()}
        for predicate, _ in BACKBONES.get(name).BACKBONE_LIMITS.rules:
            assert predicate(**{k: defaults[k] for k in inspect.signature(predicate).parameters})
