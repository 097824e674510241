"""Flag types and the common (framework-wide) command-line flags, Mammoth's names and meanings."""
from __future__ import annotations

import argparse
import inspect
import typing
from typing import Any, Callable, Mapping

# Flags that do not change what a run computes (where/how it executes, is logged, resumed or named).
# Filled by :func:`add_run_flag` where each such flag is added; every other flag changes results.
# The run hash and name, the resume check, the checkpoint layer of the config and the report's
# grouping all derive from this one declaration.
RUN_FLAGS: set[str] = set()


def add_run_flag(group: Any, *names: str, **kwargs: Any) -> argparse.Action:
    """``group.add_argument(*names, **kwargs)`` for a flag that does NOT change results.

    Such a flag is left out of the run hash, never restored from a checkpoint, may differ when
    resuming, and runs differing only in it are averaged together by the report. Use plain
    ``add_argument`` for everything else (the default: a flag changes results)."""
    action = group.add_argument(*names, **kwargs)
    RUN_FLAGS.add(action.dest)
    return action


def changes_results(key: str) -> bool:
    """Whether the argument ``key`` can change what a run computes (True unless declared a run flag)."""
    return key not in RUN_FLAGS


def result_args(args: Any) -> dict[str, Any]:
    """The result-changing entries of ``args`` (a namespace or a mapping), sorted by key."""
    items = args.items() if isinstance(args, Mapping) else vars(args).items()
    return {k: v for k, v in sorted(items) if changes_results(k)}


def parse_bool(value: str | bool | int) -> bool:
    """Explicit boolean parsing: 0/1/true/false/yes/no (``type=bool`` would make '0' true)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "on"):
        return True
    if text in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (0/1/true/false), got '{value}'")


def _ranged(base: Callable, what: str, ok: Callable[[Any], bool]) -> Callable:
    def convert(value: str) -> Any:
        try:
            number = base(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{value}'") from None
        if not ok(number):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{value}'")
        return number
    convert.__name__ = what
    return convert


positive_float = _ranged(float, "a number > 0", lambda v: v > 0 and v == v and v != float("inf"))
nonneg_float = _ranged(float, "a number >= 0", lambda v: v >= 0 and v != float("inf"))
positive_int = _ranged(int, "an integer >= 1", lambda v: v >= 1)
nonneg_int = _ranged(int, "an integer >= 0", lambda v: v >= 0)
fraction = _ranged(float, "a fraction in (0, 1), e.g. 0.1 for 10%", lambda v: 0 < v < 1)
unit_interval = _ranged(float, "a number in [0, 1)", lambda v: 0 <= v < 1)


def none_or(convert: Callable) -> Callable:
    """Accept 'none'/'null' as None, else ``convert``."""
    def parse(value: str) -> Any:
        return None if str(value).strip().lower() in ("none", "null") else convert(value)
    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def flag_from_parameter(group: Any, name: str, param: inspect.Parameter) -> None:
    """Add ``--name`` typed from a signature parameter (annotation or default)."""
    annotation, default = param.annotation, param.default
    if isinstance(annotation, str):  # postponed annotations
        annotation = eval(annotation, vars(typing))  # noqa: S307 - annotation text from our own code
    origin, choices, convert = typing.get_origin(annotation), None, None
    optional = False
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, inner[0]
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = list(typing.get_args(annotation))
        convert = type(choices[0])
    elif annotation is bool or isinstance(default, bool):
        convert = parse_bool
    elif annotation in (int, float, str):
        convert = annotation
    elif default is not None:
        convert = type(default)
    else:
        convert = str
    if optional:
        convert = none_or(convert)
    group.add_argument(f"--{name}", type=convert, default=default, choices=choices,
                       help=f"(default: {default})")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """Framework-wide flags (Mammoth names). Defaults of ``None`` are filled by the config layers."""
    exp = parser.add_argument_group("experiment")
    exp.add_argument("--lr", type=positive_float, default=None, help="learning rate (required unless a config sets it)")
    exp.add_argument("--optimizer", type=str, default="sgd", choices=["sgd", "adam", "adamw"])
    exp.add_argument("--optim_wd", type=nonneg_float, default=0.0, help="weight decay")
    exp.add_argument("--optim_mom", type=unit_interval, default=0.0, help="SGD momentum")
    exp.add_argument("--optim_nesterov", type=parse_bool, default=False, help="SGD Nesterov momentum (0/1)")
    exp.add_argument("--n_epochs", type=positive_int, default=None, help="epochs per task (default: dataset's)")
    exp.add_argument("--batch_size", type=positive_int, default=None, help="batch size (default: dataset's)")
    add_run_flag(exp, "--eval_batch_size", type=none_or(positive_int), default=None,
                     help="batch size of the test loaders (default: max(batch_size, 128); results do not depend on it)")
    exp.add_argument("--drop_last", type=parse_bool, default=False, help="drop the last incomplete train batch")
    exp.add_argument("--validation", type=none_or(fraction), default=None,
                     help="fraction of each class's training images held out as the test set (e.g. 0.1)")
    exp.add_argument("--validation_mode", type=str, default="current", choices=["current", "complete"],
                     help="validation loaders hold the current task's classes, or all classes seen so far")
    exp.add_argument("--precision", type=str, default="fp32", choices=["fp32", "bf16"],
                     help="bf16 runs forward passes under autocast (training and evaluation)")

    mgmt = parser.add_argument_group("management")
    mgmt.add_argument("--seed", type=none_or(int), default=None, help="random seed (default: none, not reproducible)")
    mgmt.add_argument("--permute_classes", type=parse_bool, default=False,
                      help="seeded random class order; new_label = order[old_label] (Mammoth's convention)")
    add_run_flag(mgmt, "--base_path", type=str, default="./data/", help="root of datasets and default results")
    add_run_flag(mgmt, "--results_file", type=str, default=None,
                      help="results JSON (default: <base_path>/results/<setting>/<dataset>/<model>/<run>.json)")
    add_run_flag(mgmt, "--checkpoint_path", type=str, default="./checkpoints/", help="checkpoint folder")
    add_run_flag(mgmt, "--savecheck", type=none_or(str), default=None, choices=[None, "last", "task"],
                      help="save a checkpoint after every task ('task') or after the last one ('last')")
    add_run_flag(mgmt, "--ckpt_name", type=none_or(str), default=None,
                      help="checkpoint run name (default: derived from model, dataset, seed and a hash of the args)")
    add_run_flag(mgmt, "--loadcheck", type=none_or(str), default=None,
                      help="resume from this checkpoint file (continues after its last completed task)")
    add_run_flag(mgmt, "--resume", type=parse_bool, default=False, nargs="?", const=True,
                      help="continue this run from its last complete checkpoint in --checkpoint_path")
    add_run_flag(mgmt, "--stop_after", type=none_or(positive_int), default=None,
                      help="stop after this many tasks (the run can be resumed later)")
    add_run_flag(mgmt, "--device", type=none_or(str), default=None, help="cpu, cuda, cuda:N or mps (default: auto)")
    add_run_flag(mgmt, "--distributed", type=str, default="no", choices=["no", "ddp"],
                      help="ddp: data-parallel over the processes started by torchrun (see README)")
    add_run_flag(mgmt, "--dist_timeout", type=positive_float, default=600.0,
                      help="seconds a collective may wait for the other ranks before the job fails")
    add_run_flag(mgmt, "--num_workers", type=nonneg_int, default=0, help="data-loader worker processes")
    add_run_flag(mgmt, "--non_verbose", type=parse_bool, default=False, nargs="?", const=True,
                      help="no progress bars")
    mgmt.add_argument("--debug_mode", type=parse_bool, default=False, nargs="?", const=True,
                      help="run only a few batches per epoch and per evaluation (smoke tests)")
    mgmt.add_argument("--enable_other_metrics", type=parse_bool, default=False, nargs="?", const=True,
                      help="also compute forward transfer (needs an evaluation of the untrained model)")
    add_run_flag(mgmt, "--traceback", type=parse_bool, default=False, nargs="?", const=True,
                      help="show the full traceback of user errors")
    add_run_flag(mgmt, "--notes", type=none_or(str), default=None, help="free text stored with the results")

    out = parser.add_argument_group("outputs and tracking")
    add_run_flag(out, "--plots", type=parse_bool, default=True,
                     help="save PNGs of the accuracy matrix and the average accuracy next to the results JSON (0/1)")
    add_run_flag(out, "--wandb_project", type=none_or(str), default=None,
                     help="log the result scalars to this Weights & Biases project (needs `pip install wandb`)")
    add_run_flag(out, "--wandb_entity", type=none_or(str), default=None, help="W&B entity (user or team)")
    add_run_flag(out, "--wandb_name", type=none_or(str), default=None, help="W&B run name (default: the run name)")
    add_run_flag(out, "--tensorboard", type=none_or(str), default=None,
                     help="write TensorBoard event files of the result scalars into this folder")
