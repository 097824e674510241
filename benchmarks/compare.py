"""Compare continual-learning methods over seeds: one run per (method, seed), then a table and a plot.

    python -m benchmarks.compare --dataset seq-custom --backbone resnet18 --models sgd,ewc_on,derpp \
        --seeds 3 --out runs/compare -- --data_path ../shared/data/cifar10_mini.npz --lr 0.03 --n_epochs 1

Flags after ``--`` (and any flag compare does not know) are passed to every run. Per-method flags
go in ``--extra "derpp:--buffer_size 200 --alpha 0.1"`` (repeatable); they override shared ones.
ViT-only methods (``VIT_METHODS``) need a ViT: they run on ``--vit_backbone`` with
``--vit_args`` instead of ``--backbone``/``--backbone_args``. Results JSONs go to
``<out>/results/<model>/seed<k>.json`` (a complete one is reused with ``--reuse 1``); the table and
plot are written by :func:`app.report.build_report` (``report.md``, ``report.csv``, ``report.png``).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import traceback
from typing import Callable, Optional

from utils.args import nonneg_int, parse_bool, positive_int
from utils.errors import UserError

# Flags a method needs that a shared command line may not give (the shared flags and --extra win).
METHOD_DEFAULTS = {"er": "--buffer_size 200", "der": "--buffer_size 200", "derpp": "--buffer_size 200"}
VIT_METHODS = ("l2p", "coda_prompt", "dualprompt", "inflora", "apt")


def parse_models(spec: str) -> list[tuple[str, str]]:
    """``"sgd,ita=second_order"`` -> ``[("sgd", "sgd"), ("ita", "second_order")]`` (label, model)."""
    entries = []
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        label, sep, model = item.partition("=")
        label, model = label.strip(), (model.strip() if sep else label.strip())
        if not label or not model:
            raise UserError(f"--models entry '{item}' must be METHOD or LABEL=METHOD")
        entries.append((label, model))
    labels = [label for label, _ in entries]
    if len(set(labels)) != len(labels):
        raise UserError(f"--models {spec} repeats a label; name variants of one method LABEL=METHOD")
    return entries


def split_flags(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """``['--a', '1', '--b', '--c=2']`` -> ``[('--a', ['1']), ('--b', []), ('--c', ['2'])]``."""
    groups: list[tuple[str, list[str]]] = []
    for token in tokens:
        if token.startswith("--"):
            flag, eq, value = token.partition("=")
            groups.append((flag, [value] if eq else []))
        elif not groups:
            raise UserError(f"'{token}' is not preceded by a flag; pass flags like --lr 0.03")
        else:
            groups[-1][1].append(token)
    return groups


def merge_flags(*layers: list[str]) -> list[str]:
    """Concatenate flag lists; a flag given again in a later layer replaces the earlier value."""
    merged: dict[str, list[str]] = {}
    for layer in layers:
        for flag, values in split_flags(layer):
            merged.pop(flag, None)
            merged[flag] = values
    return [token for flag, values in merged.items() for token in (flag, *values)]


def parse_extras(items: list[str]) -> dict[str, list[str]]:
    """``["derpp:--buffer_size 200", "derpp:--alpha 0.1"]`` -> ``{"derpp": [...all flags...]}``."""
    extras: dict[str, list[str]] = {}
    for item in items:
        method, sep, flags = item.partition(":")
        if not sep or not method.strip():
            raise UserError(f"--extra '{item}' must look like 'METHOD:--flag value ...'")
        extras.setdefault(method.strip(), []).extend(shlex.split(flags))
    return extras


def run_argv(model: str, seed: int, args: argparse.Namespace, shared: list[str], extras: dict[str, list[str]],
             results_file: str, label: Optional[str] = None) -> list[str]:
    """The ``main.py`` arguments of one run (``label``: the --models label whose --extra flags apply)."""
    vit = model in VIT_METHODS
    backbone = ["--backbone", args.vit_backbone] if vit else (["--backbone", args.backbone] if args.backbone else [])
    backbone_args = shlex.split(args.vit_args if vit else args.backbone_args)
    return merge_flags(["--model", model, "--dataset", args.dataset], backbone, backbone_args,
                       shlex.split(METHOD_DEFAULTS.get(model, "")), shared, extras.get(label or model, []),
                       ["--seed", str(seed), "--results_file", results_file, "--non_verbose", "1"])


def is_complete(path: str) -> bool:
    try:
        with open(path) as fh:
            return bool(json.load(fh).get("complete"))
    except (OSError, ValueError):
        return False


def result_path(out: str, label: str, seed: int) -> str:
    return os.path.join(out, "results", label, f"seed{seed}.json")


def run_jobs(jobs: list[tuple[str, int, list[str]]], out: str, reuse: bool, tag: str) -> tuple[list[str], list[str]]:
    """Run each ``(label, seed, main.py argv)`` whose results JSON (``<out>/results/<label>/seed<k>.json``, also
    named by its ``--results_file``) is not already complete; returns (result files, failed runs)."""
    from app.runner import run

    result_files, failures = [], []
    for label, seed, command in jobs:
        path = result_path(out, label, seed)
        if not (reuse and is_complete(path)):
            print(f"[{tag}] {label} seed {seed}: python main.py {shlex.join(command)}", flush=True)
            try:
                run(command)
            except Exception as exc:  # one failing method must not lose the others' results
                traceback.print_exc()
                failures.append(f"{label} seed {seed}: {type(exc).__name__}: {exc}")
                continue
        result_files.append(path)
    return result_files, failures


def parse_with_shared(parser: argparse.ArgumentParser, argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    """The script's own flags, and the flags for every run: the ones the script does not know and those after
    ``--`` (``argv`` defaults to the command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    shared: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, shared = argv[:cut], argv[cut + 1:]
    args, unknown = parser.parse_known_args(argv)
    return args, unknown + shared


def print_outcome(tag: str, paths: dict[str, str], failures: list[str]) -> None:
    """The failed runs (stderr), then the files written."""
    for failure in failures:
        print(f"[{tag}] FAILED {failure}", file=sys.stderr)
    for kind, path in paths.items():
        print(f"{kind}: {path}")


def exit_code(run: Callable[[], int]) -> int:
    """``run()``'s exit code; a ``UserError`` prints its one-line message and gives its code (2)."""
    try:
        return run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--models", required=True,
                        help="comma-separated method names; LABEL=METHOD runs a variant under its own label")
    parser.add_argument("--backbone", default=None, help="backbone of the methods (default: the dataset's)")
    parser.add_argument("--backbone_args", default="", help="flags for --backbone, e.g. '--num_filters 32'")
    parser.add_argument("--vit_backbone", default="vit_tiny", help=f"backbone of {', '.join(VIT_METHODS)}")
    parser.add_argument("--vit_args", default="", help="flags for --vit_backbone, e.g. '--embed_dim 64 --depth 2'")
    parser.add_argument("--seeds", type=positive_int, default=3, help="number of seeds")
    parser.add_argument("--first_seed", type=nonneg_int, default=0, help="seeds are first_seed .. first_seed+seeds-1")
    parser.add_argument("--extra", action="append", default=[], help="'METHOD:--flag value ...' (repeatable)")
    parser.add_argument("--out", default="benchmarks/out/compare", help="output folder (git-ignored by default)")
    parser.add_argument("--reuse", type=parse_bool, default=True, help="reuse complete results already in --out")
    return parser


def compare(argv: Optional[list[str]] = None) -> tuple[dict[str, str], list[str]]:
    """Run every (method, seed) and build the report; returns the report paths and the failed runs."""
    args, shared = parse_with_shared(build_parser(), argv)
    entries = parse_models(args.models)
    extras = parse_extras(args.extra)
    stray = sorted(set(extras) - {label for label, _ in entries})
    if stray:
        raise UserError(f"--extra names {', '.join(stray)}, which is not in --models {args.models}")
    from app.report import build_report  # heavy imports only when running

    jobs = [(label, seed, run_argv(model, seed, args, shared, extras, result_path(args.out, label, seed), label))
            for label, model in entries for seed in range(args.first_seed, args.first_seed + args.seeds)]
    result_files, failures = run_jobs(jobs, args.out, args.reuse, "compare")
    if not result_files:
        raise UserError("every run failed: " + "; ".join(failures))
    paths = build_report(result_files, args.out)
    print_outcome("compare", paths, failures)
    return paths, failures


def main(argv: Optional[list[str]] = None) -> int:
    return exit_code(lambda: 1 if compare(argv)[1] else 0)


if __name__ == "__main__":
    sys.exit(main())
