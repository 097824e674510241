"""Typed settings of a method: a dataclass whose fields are the method's flags.

One declaration gives the flags (:func:`add_settings_flags`, called by ``ContinualModel.get_parser``
for the model's ``SETTINGS``) and a typed, frozen object built once from the parsed flags
(:func:`settings_from_args`; ``ContinualModel`` stores it as ``self.settings``)::

    @dataclass(frozen=True)
    class MySettings:
        my_weight: float = setting(1.0, nonneg_float, "weight of my loss")

    class MyMethod(ContinualModel):
        SETTINGS = MySettings
        settings: MySettings

``self.args`` stays available (Mammoth's model files read it).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

from utils.args import add_run_flag, none_or, positive_int

T = TypeVar("T")


def setting(default: Any, type: Callable[[str], Any], help: str, choices: Optional[Sequence[Any]] = None,
            changes_results: bool = True) -> Any:
    """A dataclass field that is also the flag ``--<field name>`` (``type`` parses its text)."""
    meta = {"type": type, "help": help, "choices": choices, "changes_results": changes_results, "default": default}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def add_settings_flags(parser: Any, cls: type) -> Any:
    """Add one flag per field of the settings dataclass ``cls`` to ``parser`` (a parser or a group)."""
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "type" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name} must be declared with utils.settings.setting(...)")
        add = parser.add_argument if meta["changes_results"] else (lambda *a, **k: add_run_flag(parser, *a, **k))
        add(f"--{f.name}", type=meta["type"], default=meta["default"], choices=meta["choices"],
            help=f"{meta['help']} (default: {meta['default']})")
    return parser


def settings_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The settings dataclass ``cls`` with every field read from the parsed flags ``args`` (a field
    missing from ``args``, e.g. in a hand-built namespace, keeps its declared default)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


@dataclass(frozen=True)
class RehearsalSettings:
    """The replay buffer's flags (``er``, ``der``, ``derpp`` and Mammoth's ``add_rehearsal_args``)."""
    buffer_size: Optional[int] = setting(None, none_or(positive_int),
                                         "number of stored examples (required for rehearsal methods)")
    minibatch_size: Optional[int] = setting(None, none_or(positive_int), "replayed examples per step (None: --batch_size)")
