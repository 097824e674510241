"""Aggregate result JSONs into a Markdown table, a CSV table and a task-by-task comparison PNG.

``python -m app.report DIR_OR_FILE... [--out OUT_DIR]`` reads every results JSON (as written by
``main.py``) under the given folders, groups the complete runs by dataset and model, and reports
mean ± std over the runs (seeds) of the final class-IL and task-IL accuracy, the class-IL
forgetting and the wall-clock time. The std is the sample standard deviation (n - 1 in the
denominator; 0 for a single run). A value no run has (e.g. task-IL in domain-IL, or a task without
test images accepted with ``--allow_incomplete_test_set``) is ``–`` in the Markdown, an empty CSV
cell and a gap in the plot, never NaN; a non-finite number in an older JSON counts as missing. Runs of one model whose result-changing arguments (every flag not
declared with ``utils.args.add_run_flag``) differ in anything but the seed (e.g. two learning rates,
or ``--debug_mode``) are kept apart, labelled ``model (lr=0.01)``; runs differing only in run flags
(``--distributed``, ``--eval_batch_size``, ``--device`` ...) are averaged together.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from collections import defaultdict
from typing import Any, Iterable, Optional

from utils.args import changes_results
from utils.errors import UserError
from utils.io import atomic_write

METRICS = (("final_class_il", "final class-IL (%)"), ("final_task_il", "final task-IL (%)"),
           ("forgetting", "forgetting (%)"), ("wall_clock_seconds", "wall-clock (s)"))
REPLICATE_KEY = "seed"  # the runs of one group are its repetitions over this argument


def find_result_files(paths: Iterable[str]) -> list[str]:
    """Every ``*.json`` under the given folders (recursively) plus the given files, sorted."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, _, files in os.walk(path):
                found.extend(os.path.join(root, f) for f in files if f.endswith(".json"))
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError(f"{path} does not exist; pass result folders or result JSON files")
    return sorted(set(found))


def load_result(path: str) -> Optional[dict[str, Any]]:
    """The results dict of ``path``, or None when it is not a results file of this framework."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "accuracy_matrix_class_il" not in data or "args" not in data:
        return None
    return data


def finite(value: Any) -> Optional[float]:
    """``value`` as a float when it is a finite number, else None (missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (0 for a single value); (None, None) for no values."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _run_values(result: dict[str, Any]) -> dict[str, Optional[float]]:
    timings = result.get("timings") or {}
    return {"final_class_il": result.get("final_class_il"), "final_task_il": result.get("final_task_il"),
            "forgetting": result.get("forgetting"), "wall_clock_seconds": timings.get("total_seconds")}


def _variant_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Per run: '' or '(k=v, ...)' naming the result-changing args (but the seed) that differ within the group."""
    keys = sorted(k for k in {k for r in runs for k in r["args"]} if k != REPLICATE_KEY and changes_results(k))
    varying = [k for k in keys if len({json.dumps(r["args"].get(k), sort_keys=True) for r in runs}) > 1]
    return ["(" + ", ".join(f"{k}={r['args'].get(k)}" for k in varying) + ")" if varying else "" for r in runs]


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, method variant): counts, seeds, mean/std of each metric, per-task curves."""
    from app.config import declare_flags
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        args = result["args"]
        declare_flags(args.get("model"), args.get("dataset"), args.get("backbone"))
        by_pair[(str(result["args"].get("dataset")), str(result["args"].get("model")))].append(result)
    rows = []
    for (dataset, model), runs in sorted(by_pair.items()):
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for run, label in zip(runs, _variant_labels(runs)):
            groups[f"{model} {label}".strip()].append(run)
        for method, members in sorted(groups.items()):
            row: dict[str, Any] = {"dataset": dataset, "method": method, "model": model, "n_runs": len(members),
                                   "seeds": sorted(str(m["args"].get("seed")) for m in members)}
            for key, _ in METRICS:
                values = [v for v in (finite(_run_values(m)[key]) for m in members) if v is not None]
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
            curves = [m.get("average_class_il_per_task") or [] for m in members]
            length = min(len(c) for c in curves)
            per_task = [mean_std([v for v in (finite(c[t]) for c in curves) if v is not None])
                        for t in range(length)]
            row["class_il_per_task_mean"] = [m for m, _ in per_task]
            row["class_il_per_task_std"] = [s for _, s in per_task]
            rows.append(row)
    return rows


def _fmt(mean: Optional[float], std: Optional[float]) -> str:
    return "–" if mean is None else f"{mean:.2f} ± {std:.2f}"


def to_markdown(rows: list[dict[str, Any]], skipped: list[str]) -> str:
    lines = ["# Results", "", "Mean ± sample std over runs (seeds); complete runs only.", ""]
    header = "| method | runs | seeds | " + " | ".join(title for _, title in METRICS) + " |"
    for dataset in sorted({r["dataset"] for r in rows}):
        lines += [f"## {dataset}", "", header, "|" + "---|" * (3 + len(METRICS))]
        for r in (r for r in rows if r["dataset"] == dataset):
            cells = [_fmt(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in METRICS]
            lines.append(f"| {r['method']} | {r['n_runs']} | {', '.join(r['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    if skipped:
        lines += ["Skipped (incomplete runs): " + ", ".join(skipped), ""]
    return "\n".join(lines)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = ["dataset", "method", "model", "n_runs", "seeds"] + [f"{k}_{s}" for k, _ in METRICS
                                                                   for s in ("mean", "std")]
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seeds": " ".join(r["seeds"]),
                         **{c: repr(r[c]) for c in columns if isinstance(r.get(c), float)}})
    return buffer.getvalue()


def build_report(result_paths: list[str], out_dir: str) -> dict[str, str]:
    """Write ``report.md``, ``report.csv`` and ``report.png`` into ``out_dir``; return their paths.

    ``result_paths`` are result JSON files or folders searched recursively. Files that are not
    results of this framework are ignored; incomplete runs are listed in the Markdown but not averaged.
    """
    from utils.plots import plot_task_comparison

    results, skipped = [], []
    for path in find_result_files(result_paths):
        result = load_result(path)
        if result is None:
            continue
        if result.get("complete") is False:
            skipped.append(os.path.basename(path))
            continue
        results.append(result)
    if not results:
        raise UserError(f"no complete result JSONs found in {', '.join(result_paths)}; run main.py first")
    rows = aggregate(results)
    paths = {"markdown": os.path.join(out_dir, "report.md"), "csv": os.path.join(out_dir, "report.csv"),
             "png": os.path.join(out_dir, "report.png")}
    markdown, table = to_markdown(rows, skipped), to_csv(rows)
    atomic_write(paths["markdown"], lambda fh: fh.write(markdown))
    atomic_write(paths["csv"], lambda fh: fh.write(table))
    panels: dict[str, dict[str, list[Optional[float]]]] = defaultdict(dict)
    stds: dict[str, dict[str, list[Optional[float]]]] = defaultdict(dict)
    for r in rows:
        panels[r["dataset"]][r["method"]] = r["class_il_per_task_mean"]
        stds[r["dataset"]][r["method"]] = r["class_il_per_task_std"]
    plot_task_comparison(panels, paths["png"], stds=stds)
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="result folders (searched recursively) or result JSON files")
    parser.add_argument("--out", default=None, help="output folder (default: the first folder given)")
    args = parser.parse_args(argv)
    out = args.out or (args.paths[0] if os.path.isdir(args.paths[0]) else os.path.dirname(args.paths[0]) or ".")
    try:
        paths = build_report(args.paths, out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
