"""Mammoth's parser helpers for model files (``utils.args`` re-exports them).

A Mammoth model declares its flags in ``get_parser(parser)`` (newer style, the parser is
passed in) or ``get_parser()`` (older style: it builds an ``ArgumentParser`` itself, usually
after ``add_management_args(parser)``/``add_experiment_args(parser)``). The framework adds the
management and experiment flags itself, so those two helpers add nothing here and the
older style's own flags are copied into the framework's parser by :func:`call_get_parser`.
"""
from __future__ import annotations

import argparse
import inspect
from typing import Any


def add_management_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No-op: the framework's parser already holds Mammoth's management flags."""
    return parser


def add_experiment_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No-op: the framework's parser already holds Mammoth's experiment flags."""
    return parser


def add_initial_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """No-op: ``--dataset``/``--model``/``--backbone``/``--load_best_args`` are framework flags."""
    return parser


def call_get_parser(model_cls: Any, group: Any) -> None:
    """Let ``model_cls`` add its flags to ``group``, whichever ``get_parser`` style it uses."""
    getter = model_cls.get_parser
    try:
        takes_parser = len(inspect.signature(getter).parameters) >= 1
    except (TypeError, ValueError):
        takes_parser = True
    if takes_parser:
        getter(group)
        return
    own = getter()  # older Mammoth style: a fresh parser with the model's flags
    existing = set(getattr(group, "_option_string_actions", {}))
    container = getattr(group, "_container", group)
    existing |= set(getattr(container, "_option_string_actions", {}))
    for action in own._actions:
        if not action.option_strings or any(o in existing for o in action.option_strings):
            continue
        kwargs = {"dest": action.dest, "default": action.default, "help": action.help}
        if isinstance(action, argparse._StoreAction):  # noqa: SLF001 - argparse has no public action types
            kwargs.update(type=action.type, choices=action.choices, nargs=action.nargs, required=action.required)
            group.add_argument(*action.option_strings, **kwargs)
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
            group.add_argument(*action.option_strings, action="store_true" if action.const else "store_false",
                               dest=action.dest, default=action.default, help=action.help)
    for key, value in own._defaults.items():  # noqa: SLF001
        group.set_defaults(**{key: value})
