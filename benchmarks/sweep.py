"""Validation-based hyper-parameter selection: run a grid on a held-out split, then test the chosen setting.

    python -m benchmarks.sweep --model ita --grid "alpha_ita=0.1,1,10;req_weight_cls=0.01,0.1" \
        --out runs/sweep -- --dataset seq-custom --data_path ../shared/data/cifar10_mini.npz --lr 0.001 ...

Every setting of the grid (the cartesian product of the ``;``-separated ``flag=v1,v2`` lists) is run with
``--validation P`` (Mammoth's percentage of each class's training images held out; the model never sees
the test split). The setting with the best validation final class-IL (ties: the first in grid order) is
then run once more on the full training data and evaluated on the test split; that is the reported test
accuracy. Flags after ``--`` (and any flag sweep does not know) are passed to every run. Results JSONs go
to ``<out>/validation/<setting>.json`` and ``<out>/test/<setting>.json``; complete ones are reused with
``--reuse 1`` (as in :mod:`benchmarks.compare`, whose flag handling is reused). The summary is written to
``<out>/sweep.json`` and ``<out>/sweep.md``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import sys
import traceback
from typing import Any, Optional

from benchmarks.compare import exit_code, is_complete, merge_flags, parse_with_shared, split_flags
from utils.args import parse_bool, percentage
from utils.errors import UserError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VALUE = re.compile(r"^[A-Za-z0-9_.+\-]+$")


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """``"a=1,2;b=x"`` -> ``[("a", ["1", "2"]), ("b", ["x"])]``; a malformed grid is a :class:`UserError`."""
    hint = "write it like 'alpha_ita=0.1,1,10;req_weight_cls=0.01,0.1'"
    grid: list[tuple[str, list[str]]] = []
    for part in (p.strip() for p in str(text).split(";")):
        if not part:
            continue
        name, eq, values_text = part.partition("=")
        name = name.strip().lstrip("-")
        values = [v.strip() for v in values_text.split(",")]
        if not eq or not _NAME.match(name):
            raise UserError(f"--grid entry '{part}' is not 'flag=v1,v2,...'; {hint}")
        if not values or any(not v for v in values):
            raise UserError(f"--grid entry '{part}' has an empty value; {hint}")
        bad = [v for v in values if not _VALUE.match(v)]
        if bad:
            raise UserError(f"--grid value '{bad[0]}' of {name} may hold only letters, digits and _.+-; {hint}")
        if len(set(values)) != len(values):
            raise UserError(f"--grid lists a value of {name} twice; give each value once")
        if any(name == other for other, _ in grid):
            raise UserError(f"--grid names {name} twice; give all its values in one entry")
        grid.append((name, values))
    if not grid:
        raise UserError(f"--grid '{text}' is empty; {hint}")
    return grid


def grid_settings(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """The cartesian product of the grid, in grid order (the last flag varies fastest)."""
    names = [name for name, _ in grid]
    return [dict(zip(names, combo)) for combo in itertools.product(*(values for _, values in grid))]


def setting_label(setting: dict[str, str]) -> str:
    """``{"a": "1", "b": "x"}`` -> ``"a=1,b=x"`` (also the results file's stem)."""
    return ",".join(f"{name}={value}" for name, value in setting.items())


def setting_flags(setting: dict[str, str]) -> list[str]:
    return [token for name, value in setting.items() for token in (f"--{name}", value)]


def read_accuracy(path: str) -> tuple[float, float]:
    with open(path) as fh:
        res = json.load(fh)
    return float(res["final_class_il"]), float(res["final_task_il"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the method whose flags are swept (e.g. ita, iel, sgd)")
    parser.add_argument("--grid", required=True, help="'flag=v1,v2;flag2=v3,v4' (cartesian product)")
    parser.add_argument("--validation", type=percentage, default=10.0,
                        help="percentage of each class's training images held out for selection (default 10)")
    parser.add_argument("--out", default="benchmarks/out/sweep", help="output folder (git-ignored by default)")
    parser.add_argument("--reuse", type=parse_bool, default=True, help="reuse complete results already in --out")
    return parser


def _run_once(command: list[str], path: str, reuse: bool, what: str, failures: list[str]) -> bool:
    """Run ``main.py command`` unless ``path`` already holds a complete result; False if the run failed."""
    if reuse and is_complete(path):
        print(f"[sweep] {what}: reusing {path}", flush=True)
        return True
    from app.runner import run  # heavy imports only when running

    print(f"[sweep] {what}: python main.py {shlex.join(command)}", flush=True)
    try:
        run(command)
    except UserError:
        raise  # bad run flags are the same for every setting: stop at the first
    except Exception as exc:  # one diverging setting must not lose the others' results
        traceback.print_exc()
        failures.append(f"{what}: {type(exc).__name__}: {exc}")
        return False
    return True


def sweep(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the grid on the validation split, the best setting on the test split; returns the summary."""
    args, shared = parse_with_shared(build_parser(), argv)
    settings = grid_settings(parse_grid(args.grid))
    passed = {flag for flag, _ in split_flags(shared)}
    for flag in ("--validation", "--results_file", "--model"):
        if flag in passed:
            raise UserError(f"{flag} is set by the sweep; pass --model/--validation/--out before '--' instead")
    base = ["--model", args.model]
    tail = ["--non_verbose", "1"]
    rows, failures = [], []
    for setting in settings:
        label = setting_label(setting)
        path = os.path.join(args.out, "validation", f"{label}.json")
        command = merge_flags(base, shared, setting_flags(setting),
                              ["--validation", f"{args.validation:g}", "--results_file", path], tail)
        row: dict[str, Any] = {"setting": setting, "label": label, "validation_file": path}
        if _run_once(command, path, args.reuse, f"validation {label}", failures) and is_complete(path):
            row["validation_class_il"], row["validation_task_il"] = read_accuracy(path)
        rows.append(row)
    scored = [row for row in rows if "validation_class_il" in row]
    if not scored:
        raise UserError("every validation run failed: " + "; ".join(failures))
    best = max(scored, key=lambda row: row["validation_class_il"])  # max keeps the first of equal scores
    test_path = os.path.join(args.out, "test", f"{best['label']}.json")
    command = merge_flags(base, shared, setting_flags(best["setting"]), ["--results_file", test_path], tail)
    summary: dict[str, Any] = {"model": args.model, "grid": args.grid, "validation_percent": args.validation,
                               "run_flags": shared, "rows": rows, "chosen": best["setting"],
                               "chosen_label": best["label"], "test_file": test_path, "failures": failures}
    if _run_once(command, test_path, args.reuse, f"test {best['label']}", failures) and is_complete(test_path):
        summary["test_class_il"], summary["test_task_il"] = read_accuracy(test_path)
    write_summary(summary, args.out)
    return summary


def summary_markdown(summary: dict[str, Any]) -> str:
    from utils.tables import markdown_table

    lines = [f"# Sweep of {summary['model']}: {summary['grid']}", "",
             f"Selected on a {summary['validation_percent']:g}% validation split of the training data "
             "(final class-IL); the chosen setting was then trained on all training data and tested.", ""]
    rows = []
    for row in summary["rows"]:
        cil, til = row.get("validation_class_il"), row.get("validation_task_il")
        cells = ("failed", "failed") if cil is None else (f"{cil:.2f}", f"{til:.2f}")
        rows.append([row["label"], *cells, "yes" if row["label"] == summary["chosen_label"] else ""])
    lines += markdown_table(["setting", "validation class-IL", "validation task-IL", "chosen"], rows)
    lines.append("")
    if "test_class_il" in summary:
        lines.append(f"Test accuracy of {summary['chosen_label']}: class-IL {summary['test_class_il']:.2f}, "
                     f"task-IL {summary['test_task_il']:.2f}")
    else:
        lines.append(f"The test run of {summary['chosen_label']} failed.")
    lines.extend(f"- failed: {failure}" for failure in summary["failures"])
    return "\n".join(lines) + "\n"


def write_summary(summary: dict[str, Any], out: str) -> None:
    from utils.io import write_json
    from utils.tables import write_tables

    write_json(os.path.join(out, "sweep.json"), summary)
    write_tables(os.path.join(out, "sweep"), [summary_markdown(summary).rstrip("\n")])


def main(argv: Optional[list[str]] = None) -> int:
    def run() -> int:
        summary = sweep(argv)
        print(summary_markdown(summary))
        return 1 if summary["failures"] or "test_class_il" not in summary else 0
    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
