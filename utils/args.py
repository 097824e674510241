"""Flag types and the common (framework-wide) command-line flags, Mammoth's names and meanings."""
from __future__ import annotations

import argparse
import inspect
import typing
from argparse import ArgumentParser  # noqa: F401 - Mammoth's model files import it from here
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


binary_to_boolean_type = parse_bool  # Mammoth's name for the 0/1 flag type


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
unit_fraction = _ranged(float, "a fraction in (0, 1]", lambda v: 0 < v <= 1)
probability = _ranged(float, "a probability in [0, 1]", lambda v: 0 <= v <= 1)


def percentage(value: str) -> float:
    """Mammoth's ``--validation``: a percentage in (0, 100), e.g. 10; a value below 1 is a fraction (0.1 = 10 %)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 < number < 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in (0, 100), e.g. 10 for 10%, got '{value}'")
    return round(number * 100, 6) if number < 1 else number


def int_list(value: str | list) -> list[int]:
    """Integers separated by commas and/or spaces (e.g. '3,1,0,2'), or a YAML list."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(",", " ").split()
    try:
        return [int(v) for v in items]
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got '{value}'") from None


def index_list(what: str, example: str) -> Callable[[str], list[int]]:
    """A parser of comma-separated indices >= 0 (``what``, e.g. ``example``), returned sorted without repeats."""
    def parse(text: str) -> list[int]:
        try:
            values = sorted({int(v) for v in str(text).split(",") if v.strip()})
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} like {example}, got '{text}'") from None
        if not values or values[0] < 0:
            raise argparse.ArgumentTypeError(f"expected {what} >= 0 like {example}, got '{text}'")
        return values
    return parse


unit_interval = _ranged(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
seed_int = _ranged(int, "a seed in [0, 2**32 - 1]", lambda v: 0 <= v < 2 ** 32)  # numpy's seed range


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
    exp.add_argument("--drop_last", type=parse_bool, default=False,
                     help="drop the last incomplete train batch (default 0: kept; a last batch of one sample is "
                          "merged into the previous batch, safe for BatchNorm)")
    exp.add_argument("--validation", type=none_or(percentage), default=None,
                     help="percentage of each class's training images held out as the test set (Mammoth's "
                          "meaning: 10 = 10%%; a value below 1 is a fraction, 0.1 = 10%%)")
    add_run_flag(exp, "--allow_incomplete_test_set", type=parse_bool, default=False, nargs="?", const=True,
                 help="accept a test (or --validation) set without images of some classes or tasks: accuracy is "
                      "over the classes that have test images, a task without any is null in the results "
                      "(default 0: such a run is refused before training)")
    exp.add_argument("--validation_mode", type=str, default="current", choices=["current", "complete"],
                     help="validation loaders hold the current task's classes, or all classes seen so far")
    exp.add_argument("--joint", type=parse_bool, default=False, nargs="?", const=True,
                     help="train jointly on all the data: the run becomes one task with every class (every domain)")
    exp.add_argument("--precision", type=str, default=None, choices=["fp32", "bf16"],
                     help="bf16 runs forward passes under autocast (training and evaluation); "
                          "default: what --code_optimization implies (fp32 below 2)")
    exp.add_argument("-O", "--code_optimization", type=int, default=None, choices=[0, 1, 2, 3],
                     help="0 plain fp32, 1 TF32 on CUDA, 2 bf16 autocast, 3 bf16 + torch.compile of the training "
                          "forward (default: 2 with --precision bf16, else 0; docs/speed.md)")
    add_fitting_args(exp)
    add_label_args(exp)

    mgmt = parser.add_argument_group("management")
    mgmt.add_argument("--seed", type=none_or(seed_int), default=None, help="random seed (default: none, not reproducible)")
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
    add_run_flag(mgmt, "--num_workers", type=none_or(nonneg_int), default=None,
                      help="data-loader worker processes (default: min(8, CPUs per process))")
    add_run_flag(mgmt, "--non_verbose", type=parse_bool, default=False, nargs="?", const=True,
                      help="no progress bars")
    mgmt.add_argument("--debug_mode", type=parse_bool, default=False, nargs="?", const=True,
                      help="smoke test: every pass over data (epoch, test loader, statistics pass) sees at most 4 images")
    mgmt.add_argument("--enable_other_metrics", type=parse_bool, default=False, nargs="?", const=True,
                      help="also compute forward transfer (needs an evaluation of the untrained model)")
    add_run_flag(mgmt, "--traceback", type=parse_bool, default=False, nargs="?", const=True,
                      help="show the full traceback of user errors")
    add_run_flag(mgmt, "--notes", type=none_or(str), default=None, help="free text stored with the results")
    add_run_management_args(mgmt)

    out = parser.add_argument_group("outputs and tracking")
    add_run_flag(out, "--plots", type=parse_bool, default=True,
                     help="save PNGs of the accuracy matrix and the average accuracy next to the results JSON (0/1)")
    add_run_flag(out, "--wandb_project", type=none_or(str), default=None,
                     help="log the result scalars to this Weights & Biases project (needs `pip install wandb`)")
    add_run_flag(out, "--wandb_entity", type=none_or(str), default=None, help="W&B entity (user or team)")
    add_run_flag(out, "--wandb_name", type=none_or(str), default=None, help="W&B run name (default: the run name)")
    add_run_flag(out, "--tensorboard", type=none_or(str), default=None,
                     help="write TensorBoard event files of the result scalars into this folder")


def add_fitting_args(exp: Any) -> None:
    """Mammoth's schedule and stopping flags (``utils/fitting.py`` implements them)."""
    exp.add_argument("--lr_scheduler", type=none_or(str), default=None, choices=[None, "multisteplr", "cosine"],
                     help="learning-rate schedule of model.opt, rebuilt every task (default: constant)")
    exp.add_argument("--lr_milestones", type=int, nargs="*", default=[],
                     help="multisteplr: scheduler steps (epochs, or iterations with --scheduler_mode iter) "
                          "at which the lr is multiplied by --sched_multistep_lr_gamma")
    exp.add_argument("--sched_multistep_lr_gamma", type=positive_float, default=0.1, help="multisteplr factor")
    exp.add_argument("--scheduler_mode", type=str, default="epoch", choices=["epoch", "iter"],
                     help="step the schedule after every epoch or after every iteration")
    exp.add_argument("--fitting_mode", type=str, default="epochs", choices=["epochs", "iters", "early_stopping",
                                                                            "time"],
                     help="per task: --n_epochs epochs, --n_iters iterations, or until the validation metric stops "
                          "improving (needs --validation); 'time' is refused (Mammoth has no stop rule for it)")
    exp.add_argument("--n_iters", type=none_or(positive_int), default=None,
                     help="iterations per task with --fitting_mode iters")
    exp.add_argument("--early_stopping_patience", type=positive_int, default=5,
                     help="checks without improvement before stopping (the best weights are restored)")
    exp.add_argument("--early_stopping_metric", type=str, default="loss", choices=["loss", "accuracy"],
                     help="validation metric of the current task watched by early stopping")
    exp.add_argument("--early_stopping_freq", type=positive_int, default=1, help="epochs between checks")
    exp.add_argument("--early_stopping_epsilon", type=nonneg_float, default=1e-6,
                     help="smallest change that counts as an improvement")
    exp.add_argument("--eval_future", type=parse_bool, default=False,
                     help="after each task also evaluate the future tasks with the model's future_forward "
                          "(Mammoth's FutureModel, e.g. zero-shot models)")


def add_label_args(exp: Any) -> None:
    """Mammoth's class/task order, semi-supervised and label-noise flags (``datasets/utils/labels.py``)."""
    exp.add_argument("--custom_class_order", type=none_or(int_list), default=None,
                     help="the original class ids in training order, e.g. 3,1,0,2: the first task learns the first "
                          "classes of the list (not with --permute_classes)")
    exp.add_argument("--custom_task_order", type=none_or(int_list), default=None,
                     help="the tasks (of the class order) in training order, e.g. 2,0,1")
    exp.add_argument("--label_perc_by_task", "--label_perc", type=unit_fraction, default=1.0,
                     help="fraction of each task's training images that keep their label; the others get -1 and are "
                          "dropped by models that do not support the cssl setting")
    exp.add_argument("--label_perc_by_class", type=unit_fraction, default=1.0,
                     help="fraction of each class's training images that keep their label (the others get -1)")
    exp.add_argument("--noise_rate", type=probability, default=0.0,
                     help="probability that a training label is replaced by a wrong one (observe may take "
                          "true_labels)")
    exp.add_argument("--noise_type", type=str, default="symmetric", choices=["symmetric", "asymmetric"],
                     help="symmetric: any other class; asymmetric: CIFAR-10's similar-class flips")
    add_run_flag(exp, "--disable_noisy_labels_cache", type=parse_bool, default=False,
                     help="do not cache the noisy labels on disk")
    add_run_flag(exp, "--cache_path_noisy_labels", type=str, default="noisy_labels",
                     help="folder of the noisy-label cache, relative to --base_path")


def add_run_management_args(mgmt: Any) -> None:
    """Mammoth's management flags for outputs, interruption and partial runs."""
    add_run_flag(mgmt, "--results_path", type=str, default="results/",
                      help="results folder relative to --base_path (default results file: "
                           "<base_path>/<results_path>/<setting>/<dataset>/<model>/<run>.json)")
    add_run_flag(mgmt, "--disable_log", type=parse_bool, default=False,
                      help="write no results file or plots (the run still prints its accuracies)")
    add_run_flag(mgmt, "--nowand", type=parse_bool, default=False, help="never log to Weights & Biases")
    add_run_flag(mgmt, "--eval_epochs", type=none_or(positive_int), default=None,
                      help="also evaluate every this many epochs within a task (stored as epoch_evaluations)")
    mgmt.add_argument("--inference_only", type=parse_bool, default=False,
                      help="no training: the hooks and the evaluations still run (e.g. with --loadcheck)")
    add_run_flag(mgmt, "--save_checkpoint_mode", type=str, default="safe", choices=["safe", "old_pickle"],
                      help="'safe' only: checkpoints are loaded with weights_only=True (old_pickle is refused)")
    add_run_flag(mgmt, "--start_from", type=none_or(nonneg_int), default=None,
                      help="first task to train; earlier tasks only run begin_task/end_task and are evaluated")
    add_run_flag(mgmt, "--save_after_interrupt", type=parse_bool, default=True,
                      help="on Ctrl-C save the state to <checkpoint_path>/paused/ (continue with --loadcheck)")
    add_run_flag(mgmt, "--load_best_args", type=parse_bool, default=False, nargs="?", const=True,
                      help="refused: Mammoth's deprecated best-args table; use --model_config best")


def add_rehearsal_args(parser: argparse.ArgumentParser) -> None:
    """``--buffer_size`` (required by rehearsal methods) and ``--minibatch_size`` (default: the batch size)."""
    from utils.settings import RehearsalSettings, add_settings_flags  # utils.settings builds on this module
    add_settings_flags(parser, RehearsalSettings)


# Mammoth's parser helpers, for model files written for Mammoth (see mammoth_compat.args)
from mammoth_compat.args import add_experiment_args, add_initial_args, add_management_args  # noqa: E402,F401
