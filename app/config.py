"""Layered, validated configuration (Mammoth's precedence, lowest first):

argparse defaults < dataset ``DEFAULTS`` < dataset YAML < model ``DEFAULTS`` < model YAML
(``--model_config default`` or per-dataset ``best``) < checkpoint args (``--loadcheck``/resume)
< command line. Every YAML key must be a known flag (or a dataset structure key) and every
value passes the flag's type and choices; anything else is a one-line :class:`UserError`.
"""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import Any, Optional

import yaml

from backbone import BACKBONES, add_backbone_args, check_backbone_args
from datasets import DATASETS
from datasets.utils.structure import STRUCTURE_KEYS, check_structure
from mammoth_compat.args import call_get_parser
from models import MODELS
from utils.args import add_common_args, changes_results
from utils.errors import UserError, closest
from utils.fitting import check_flags
from utils.optimization import resolve_code_optimization
from utils.registry import normalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_CONFIG_DIR = os.path.join(ROOT, "models", "config")
DATASET_CONFIG_DIR = os.path.join(ROOT, "datasets", "configs")


class CLIParser(argparse.ArgumentParser):
    """argparse that raises a one-line :class:`UserError` (with a did-you-mean hint) instead of exiting."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            unknown = [a for a in message.split(":", 1)[1].split() if a.startswith("--")]
            flags = [o for o in self._option_string_actions if o.startswith("--")]
            hints = "".join(closest(u.split("=")[0], flags) for u in unknown[:1])
            raise UserError(f"{message}{hints}; see python main.py --model M --dataset D --help")
        raise UserError(message)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"cannot read config {path}: {exc}".splitlines()[0]) from None
    except UnicodeDecodeError:
        raise UserError(f"cannot read config {path}: it is not UTF-8 text (a binary file?); "
                        f"give a YAML text file of 'flag: value' lines") from None
    except RecursionError:
        raise UserError(f"cannot read config {path}: it is nested too deeply to be a configuration; "
                        f"give a mapping of 'flag: value' lines") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of keys to values")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise UserError(f"config {path}: the key {bad[0]!r:.40} is not a name; top-level keys must be flag names, "
                        f"structure keys or model-config sections (quote it if it is one)")
    return data


def _section(data: dict, key: Any, path: str) -> dict:
    """``data[key]`` as a mapping of flags to values (a missing or empty section is ``{}``)."""
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"section '{key}' of {os.path.relpath(path, ROOT)} must be a mapping of flags to values "
                        f"(key: value lines), not a {type(value).__name__}; indent 'flag: value' under '{key}:'")
    return dict(value)


def _find_config(folder: str, name: str) -> Optional[str]:
    """``folder/<name>.yaml`` matched ignoring case and ``_``/``-``."""
    if not os.path.isdir(folder):
        return None
    for f in os.listdir(folder):
        stem, ext = os.path.splitext(f)
        if ext in (".yaml", ".yml") and normalize_name(stem) == normalize_name(name):
            return os.path.join(folder, f)
    return None


def model_config_layer(model: str, dataset: str, which: str, buffer_size: Optional[str]) -> tuple[dict, str]:
    """The model YAML values for ``--model_config default|best`` (and the file they came from)."""
    path = _find_config(MODEL_CONFIG_DIR, model)
    if path is None:
        if which == "best":
            raise UserError(f"--model_config best: model '{model}' has no config file in models/config/")
        return {}, ""
    data = _read_yaml(path)
    layer = _section(data, "default", path)
    if which == "best":
        sections = {normalize_name(k): k for k in data if k != "default"}
        key = sections.get(normalize_name(dataset))
        if key is None:
            raise UserError(f"--model_config best: {os.path.relpath(path, ROOT)} has no section for '{dataset}' "
                            f"(has: {', '.join(sorted(sections.values())) or 'none'})")
        section = _section(data, key, path)
        nested = {k: _section(section, k, path) for k in list(section) if str(k).isdigit()}
        for k in nested:
            section.pop(k)
        layer.update(section)
        if nested:
            if buffer_size is None or str(buffer_size) not in {str(k) for k in nested}:
                raise UserError(f"--model_config best for {dataset} needs --buffer_size in "
                                f"{sorted(int(k) for k in nested)}")
            layer.update({k: v for bk, sec in nested.items() if str(bk) == str(buffer_size) for k, v in sec.items()})
    return layer, path


def dataset_config_layer(dataset: str, name: Optional[str]) -> tuple[dict, dict, str]:
    """(flag defaults, structure keys, file) of ``datasets/configs/<dataset>/<name or default>.yaml``."""
    folder = os.path.join(DATASET_CONFIG_DIR, normalize_name(dataset))
    if name is None:
        path = _find_config(folder, "default")
        if path is None:
            return {}, {}, ""
    else:
        path = _find_config(folder, name)
        if path is None:
            avail = sorted(os.path.splitext(f)[0] for f in os.listdir(folder)) if os.path.isdir(folder) else []
            raise UserError(f"unknown --dataset_config '{name}' for {dataset}{closest(name, avail)}; "
                            f"available: {', '.join(avail) or 'none'}")
    data = _read_yaml(path)
    structure = {k: v for k, v in data.items() if str(k).isupper()}
    unknown = [k for k in structure if k not in STRUCTURE_KEYS]
    if unknown:
        raise UserError(f"unknown structure key '{unknown[0]}' in {os.path.relpath(path, ROOT)}"
                        f"{closest(unknown[0], STRUCTURE_KEYS)}; allowed: {', '.join(STRUCTURE_KEYS)}")
    check_structure(structure, os.path.relpath(path, ROOT))
    return {k: v for k, v in data.items() if not str(k).isupper()}, structure, path


def _coerce(parser: argparse.ArgumentParser, key: str, value: Any, source: str) -> Any:
    """Validate one config value against its flag (type and choices)."""
    if not isinstance(key, str):
        raise UserError(f"the key {key!r:.40} in {source} is not a flag name; keys must be flags of this "
                        f"model/dataset/backbone (see --help)")
    actions = {a.dest: a for a in parser._actions}
    action = actions.get(key)
    if action is None:
        dests = [a.dest for a in parser._actions if a.dest != "help"]
        raise UserError(f"unknown key '{key}' in {source}{closest(key, dests)}; keys must be flags of this "
                        f"model/dataset/backbone (see --help)")
    if isinstance(value, dict):
        raise UserError(f"bad value for '{key}' in {source}: a mapping ({value!r:.60}); give a single value")
    if isinstance(value, list) and action.nargs not in ("*", "+"):
        if any(isinstance(v, (list, dict)) for v in value):
            raise UserError(f"bad value {value!r:.60} for '{key}' in {source}; give a single value")
        value = ",".join(str(v) for v in value)  # e.g. classes_per_task: [10, 10, 5] -> "10,10,5"
    if isinstance(value, list):
        return [_coerce_one(action, key, v, source) for v in value]
    if value is not None and action.type is not None:
        try:
            value = action.type(value if isinstance(value, str) else str(value).lower()
                                if isinstance(value, bool) else str(value))
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UserError(f"bad value {value!r} for '{key}' in {source}: {exc}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"bad value {value!r} for '{key}' in {source}; choose from "
                        f"{', '.join(map(str, action.choices))}")
    return value


def _coerce_one(action: argparse.Action, key: str, value: Any, source: str) -> Any:
    """One element of a list-valued (``nargs``) flag."""
    if action.type is None:
        return value
    try:
        return action.type(str(value))
    except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
        raise UserError(f"bad value {value!r} for '{key}' in {source}: {exc}") from None


def _pre_parse(argv: list[str]) -> argparse.Namespace:
    pre = CLIParser(add_help=False)
    for flag in ("--model", "--dataset", "--backbone", "--dataset_config", "--buffer_size", "--loadcheck"):
        pre.add_argument(flag, default=None)
    pre.add_argument("--model_config", default="default")
    pre.add_argument("--resume", default=None, nargs="?", const="1")
    known, _ = pre.parse_known_args(argv)
    return known


def _reject_duplicates(argv: list[str]) -> None:
    seen = set()
    for token in argv:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            if flag in seen:
                raise UserError(f"{flag} is given twice on the command line; keep one")
            seen.add(flag)


def _reject_alias_conflicts(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A flag given under two of its names (``-O 1 --code_optimization 2``, ``--label_perc``
    and ``--label_perc_by_task``) is refused, whatever the values: neither would silently win."""
    given: dict[str, str] = {}
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            continue
        name = token.split("=", 1)[0] if token.startswith("--") else token[:2]  # -O2 is -O with the value 2
        action = parser._option_string_actions.get(name)
        if action is None:
            continue
        if action.dest in given:
            first = given[action.dest]
            raise UserError(f"{name} is given twice on the command line; keep one" if first == name else
                            f"{first} and {name} are two names of the same flag, both given; keep one")
        given[action.dest] = name


def build_parser(model_cls: Any, dataset_cls: Any, backbone_name: Optional[str]) -> CLIParser:
    """The full parser for one model/dataset/backbone combination."""
    parser = CLIParser(prog="main.py", description="Continual learning: train task by task, evaluate every seen task.")
    core = parser.add_argument_group("run")
    core.add_argument("--model", type=str, required=True, help=f"method: {', '.join(MODELS.names())}")
    core.add_argument("--dataset", type=str, required=dataset_cls is not None,
                      help=f"benchmark: {', '.join(DATASETS.names())}")
    core.add_argument("--backbone", type=str, default=None, help=f"network: {', '.join(BACKBONES.names())}")
    core.add_argument("--model_config", type=str, default="default", choices=["default", "base", "best"],
                      help="model YAML section: default, or the per-dataset best values")
    core.add_argument("--dataset_config", type=str, default=None, help="dataset YAML in datasets/configs/<dataset>/")
    add_common_args(parser)
    if dataset_cls is not None:
        dataset_cls.get_parser(parser)
    if model_cls is not None:
        call_get_parser(model_cls, parser.add_argument_group(f"model '{model_cls.NAME}' arguments"))
    if backbone_name:
        add_backbone_args(parser, BACKBONES.get(backbone_name))
    return parser


def command_line_layer(parser: argparse.ArgumentParser, argv: list[str], values: dict[str, Any],
                       sources: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``values``/``sources`` with the flags given on the command line (besides ``--help``) on top."""
    rest = [a for a in argv if a not in ("-h", "--help")]
    try:
        given = vars(parser.parse_args(rest))
    except UserError:  # e.g. a bad value: --help still shows the configuration layers
        return values, sources
    flags = {a.split("=", 1)[0] for a in rest if a.startswith("--")}
    dests = {a.dest for a in parser._actions if flags & set(a.option_strings)}
    return {**values, **{d: given[d] for d in dests}}, {**sources, **{d: "the command line" for d in dests}}


_DEFAULT_NOTE = re.compile(r"\s*\(default: [^()]*\)$")


def show_resolved_values(parser: argparse.ArgumentParser, values: dict[str, Any], sources: dict[str, str]) -> None:
    """``--help`` with a model/dataset: each flag a configuration layer sets shows that value and the layer
    (its argparse default note replaced); the other flags keep their help."""
    for action in parser._actions:
        if action.dest not in sources or action.help == argparse.SUPPRESS:
            continue
        value = values[action.dest]
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        note = f"(value: {shown}, from {sources[action.dest]})".replace("%", "%%")
        action.help = f"{_DEFAULT_NOTE.sub('', action.help or '')} {note}".strip()


def parse_args(argv: Optional[list[str]] = None, checkpoint_args: Optional[dict] = None) -> argparse.Namespace:
    """Parse ``argv`` through all configuration layers into one validated namespace."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _reject_duplicates(argv)
    pre = _pre_parse(argv)
    ckpt = dict(checkpoint_args or {})
    model_name = pre.model or ckpt.get("model")
    dataset_name = pre.dataset or ckpt.get("dataset")
    wants_help = "-h" in argv or "--help" in argv
    if not model_name or (not dataset_name and not wants_help):
        missing = "--model" if not model_name else "--dataset"
        names = MODELS.names() if missing == "--model" else DATASETS.names()
        raise UserError(f"{missing} is required; available: {', '.join(names)}")
    model_cls = MODELS.get(model_name)
    dataset_cls = DATASETS.get(dataset_name) if dataset_name else None
    which = "default" if pre.model_config == "base" else pre.model_config
    if which not in ("default", "best"):
        raise UserError(f"--model_config must be default or best, not '{pre.model_config}'")

    # configuration layers, lowest precedence first
    layers: list[tuple[str, dict]] = []
    model_layer, model_path = ({}, "") if dataset_cls is None else \
        model_config_layer(model_cls.NAME, dataset_cls.NAME, which, pre.buffer_size)
    structure: dict = {}
    if dataset_cls is not None:
        layers.append((f"{dataset_cls.NAME} defaults", dict(dataset_cls.DEFAULTS)))
        ds_name = pre.dataset_config or model_layer.get("dataset_config") or ckpt.get("dataset_config")
        ds_values, structure, ds_path = dataset_config_layer(dataset_cls.NAME, ds_name)
        layers.append((os.path.relpath(ds_path, ROOT) if ds_path else "dataset config", ds_values))
    layers.append((f"{model_cls.NAME} defaults", dict(model_cls.DEFAULTS)))
    model_path_label = os.path.relpath(model_path, ROOT) if model_path else "model config"
    layers.append((model_path_label, model_layer))
    if ckpt:
        layers.append(("checkpoint args", ckpt))

    backbone = pre.backbone
    for _, layer in reversed(layers):
        backbone = backbone or layer.get("backbone")
    parser = build_parser(model_cls, dataset_cls, backbone)
    _reject_alias_conflicts(parser, argv)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            if source == "checkpoint args" and (key not in {a.dest for a in parser._actions}
                                                or not changes_results(key)):
                continue  # run flags are this process's own; keys of other versions of the model are ignored
            if source == f"{model_cls.NAME} defaults" and key not in {a.dest for a in parser._actions}:
                continue  # a backbone flag of another backbone (e.g. pretrain_type without a ViT-B)
            merged[key] = _coerce(parser, key, value, source)
            sources[key] = source if source != model_path_label else f"{source} [{which}]"
    merged.pop("dataset_structure", None)
    parser.set_defaults(**merged)
    if wants_help:
        show_resolved_values(parser, *command_line_layer(parser, argv, merged, sources))
    if ckpt:  # the checkpoint names the run; CLI flags may still override
        parser.set_defaults(model=model_name, dataset=dataset_name)
        for action in parser._actions:
            if action.dest in ("model", "dataset"):
                action.required = False
    args = parser.parse_args(argv)

    args.model = model_cls.NAME
    args.dataset = dataset_cls.NAME
    args.backbone = backbone
    args.model_config = which
    args.dataset_structure = structure
    if args.backbone is None:
        raise UserError(f"no --backbone given and {args.dataset} has no default; choose from "
                        f"{', '.join(BACKBONES.names())}")
    if args.lr is None:
        raise UserError(f"--lr is required for model {args.model} (no config sets it), e.g. --lr 0.01")
    if args.n_epochs is None or args.batch_size is None:
        missing = "--n_epochs" if args.n_epochs is None else "--batch_size"
        raise UserError(f"{missing} is required ({args.dataset} has no default)")
    if getattr(args, "minibatch_size", 0) is None:  # as Mammoth: replay batches default to the batch size
        args.minibatch_size = args.batch_size
    check_flags(args)
    check_backbone_args(args)
    resolve_code_optimization(args, model_cls.DEFAULT_LEVELS)
    model_cls.resolve_args(args)
    return args


@functools.lru_cache(maxsize=None)
def declare_flags(model: Optional[str], dataset: Optional[str], backbone: Optional[str]) -> None:
    """Build the parser of this combination so that its flags' declarations (``utils.args.RUN_FLAGS``)
    are known, e.g. to the report; names no longer registered are skipped (the common flags remain)."""
    def find(registry: Any, name: Optional[str]) -> Any:
        try:
            return registry.get(name) if name else None
        except UserError:
            return None
    build_parser(find(MODELS, model), find(DATASETS, dataset), backbone if find(BACKBONES, backbone) else None)
