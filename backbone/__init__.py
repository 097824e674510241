"""Backbones: timm-based factories, found by name.

A backbone file defines factory functions decorated with :func:`register`. The factory's
keyword parameters with defaults become command-line flags (``--num_filters``,
``--pretrain_type`` ...); the context parameters ``num_classes``, ``img_size`` and
``in_chans`` are filled from the dataset. The same decorator declares the flags' constraints
(:class:`Limits`: smallest values, rules between flags), checked when the command line is parsed.
"""
from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from mammoth_compat.backbone import MammothBackboneAPI
from utils.errors import UserError
from utils.registry import Registry

CONTEXT_PARAMS = ("num_classes", "img_size", "in_chans")


@dataclass(frozen=True)
class Limits:
    """A backbone's constraints on its flags: the smallest value of each numeric flag (``None`` stays allowed
    where the flag is optional), and rules between flags as ``(predicate over flag values, message)``; the
    message is formatted with the flag values and says how to fix them."""

    minimum: dict[str, int] = field(default_factory=dict)
    rules: tuple[tuple[Callable[..., bool], str], ...] = ()


def register(name: str, *aliases: str, limits: Optional[Limits] = None) -> Callable:
    """Mark a factory ``f(num_classes, ..., **flags) -> ContinualBackbone`` as backbone ``name`` whose flags obey
    ``limits``."""
    def mark(fn: Callable) -> Callable:
        fn.BACKBONE_NAMES = (name, *aliases)
        fn.BACKBONE_LIMITS = limits or Limits()
        unknown = set(fn.BACKBONE_LIMITS.minimum) - set(backbone_flags(fn))
        if unknown:
            raise TypeError(f"backbone {name}: limits of unknown flags {sorted(unknown)}")
        return fn
    return mark


BACKBONES = Registry("backbone", "backbone", lambda obj: list(getattr(obj, "BACKBONE_NAMES", ())))


class ContinualBackbone(MammothBackboneAPI, nn.Module):
    """A feature extractor ``body`` followed by one linear ``classifier``.

    Every backbone has the same head interface, so methods never need to know whether
    the underlying network calls its head ``fc``, ``head`` or ``classifier`` (``head`` is an
    alias of ``classifier``, and ``get_params``/``set_params``/``get_grads`` come from
    :class:`mammoth_compat.backbone.MammothBackboneAPI`).
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim
        self.classifier = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor, returnt: str = "out") -> Any:
        """``returnt``: 'out' (logits), 'features', or 'both' (logits, features)."""
        feats = self.features(x)
        if returnt == "features":
            return feats
        out = self.classifier(feats)
        if returnt == "both":
            return out, feats
        if returnt != "out":
            raise ValueError(f"returnt must be 'out', 'features' or 'both', not {returnt!r}")
        return out


MammothBackbone = ContinualBackbone  # Mammoth's name of the backbone base class


def backbone_flags(factory: Callable) -> dict[str, inspect.Parameter]:
    """The factory parameters that are command-line flags."""
    return {n: p for n, p in inspect.signature(factory).parameters.items()
            if n not in CONTEXT_PARAMS and p.default is not inspect.Parameter.empty}


def _at_least(convert: Callable, minimum: int) -> Callable:
    """``convert``, then refuse values below ``minimum`` (``None`` passes: an optional flag left unset)."""
    def parse(text: str) -> Any:
        value = convert(text)
        if value is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'")
        return value
    parse.__name__ = f"an integer >= {minimum}"
    return parse


def add_backbone_args(parser: argparse.ArgumentParser, factory: Callable) -> None:
    """Add one flag per factory keyword, typed from its annotation and default, bounded by its :class:`Limits`."""
    from utils.args import flag_from_parameter  # local: utils.args imports nothing from here
    group = parser.add_argument_group(f"backbone '{factory.BACKBONE_NAMES[0]}' arguments")
    minimum = getattr(factory, "BACKBONE_LIMITS", Limits()).minimum
    for name, param in backbone_flags(factory).items():
        if f"--{name}" not in parser._option_string_actions:
            flag_from_parameter(group, name, param)
            if name in minimum:
                action = parser._option_string_actions[f"--{name}"]
                action.type = _at_least(action.type, minimum[name])
                action.help = f"at least {minimum[name]} {action.help}"


def check_backbone_args(args: argparse.Namespace) -> None:
    """The rules between the flags of ``args.backbone`` (e.g. ``--num_heads`` divides ``--embed_dim``); the
    first broken rule is a one-line :class:`UserError`."""
    factory = BACKBONES.get(args.backbone)
    for predicate, message in getattr(factory, "BACKBONE_LIMITS", Limits()).rules:
        names = list(inspect.signature(predicate).parameters)
        values = {n: getattr(args, n, None) for n in names}
        if any(v is None for v in values.values()):
            continue
        if not predicate(**values):
            raise UserError(f"backbone {args.backbone}: " + message.format(**values))


def get_backbone(args: argparse.Namespace, num_classes: Optional[int] = None, img_size: Optional[int] = None,
                 in_chans: int = 3) -> ContinualBackbone:
    """Build the backbone named by ``args.backbone`` with its flags from ``args``.

    ``get_backbone(args)`` (Mammoth's signature) takes the class count, image size and channels of the dataset
    that ``args`` names."""
    if num_classes is None:
        from mammoth_compat.backbone import dataset_context  # builds the dataset: an upper layer, imported late
        num_classes, img_size, in_chans = dataset_context(args)
    factory = BACKBONES.get(args.backbone)
    context = {"num_classes": num_classes, "img_size": img_size, "in_chans": in_chans}
    params = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in context.items() if k in params}
    kwargs.update({k: getattr(args, k) for k in backbone_flags(factory) if hasattr(args, k)})
    return factory(**kwargs)
