"""The paper's Table 1 in one command: each method with its published (``best``) config beside the paper's number.

    python -m benchmarks.paper --table 1 --dataset seq-cifar100-224 --seeds 3 --out benchmarks/out/paper

Porrello et al. (ICLR 2025) Table 1: Split CIFAR-100 (10 x 10), ViT-B/16 pre-trained on IN-21k, final
class-IL accuracy. Every row runs ``main.py --model M --dataset D --model_config best`` plus the row's own
flags (DER++'s buffer of 1000, the ITA/IEL variant) for each seed (APT is A-la-carte Prompt Tuning, ``apt``;
a row whose model is None would be listed as "not available"). Flags after ``--`` (and flags this
command does not know) go to every run and override the rows' (e.g. ``--num_workers 8``; the tests pass a
tiny ViT and tiny data this way); ``--extra "MODEL:--flag v"`` or ``--extra "ROW_FOLDER:--flag v"`` adds flags
to the runs of one model or one row. Results go to ``<out>/results/<row>/seed<k>.json``; complete ones are
reused (``--reuse 1``), so an interrupted table continues where it stopped. Writes ``paper_table1.md``,
``.csv`` and ``.png`` (measured mean ± sample std over seeds beside the paper's number).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Optional

from benchmarks.compare import (exit_code, merge_flags, parse_extras, parse_with_shared, print_outcome, result_path,
                                run_jobs)
from utils.args import nonneg_int, parse_bool, positive_int
from utils.errors import UserError

# IEL's published command (Mammoth's reproduction, docs/algorithm.md §7); the other keys come from best.
IEL = ["--use_iel", "1", "--beta_iel", "20", "--req_weight_cls", "0.1", "--simple_reg_weight_cls", "0.001"]
# (row, model or None when not available, row flags, paper's final accuracy) -- docs/algorithm.md §7, Table 1.
TABLES: dict[str, dict[str, list[tuple[str, Optional[str], list[str], float]]]] = {"1": {"seq-cifar100-224": [
    ("Joint (upper bound)", "joint", [], 91.74),
    ("Finetune", "sgd", [], 21.57),
    ("EWC", "ewc_on", [], 73.49),
    ("LwF-MC", "lwf_mc", [], 72.16),
    ("DER++ (buffer 1000)", "derpp", ["--buffer_size", "1000"], 83.02),
    ("L2P", "l2p", [], 87.32),
    ("CODA-Prompt", "coda_prompt", [], 86.48),
    ("SEED", "seed", [], 83.39),
    ("APT", "apt", [], 86.19),
    ("InfLoRA", "inflora", [], 87.17),
    ("TMC", "tmc", [], 78.42),
    ("ITA-FFT", "second_order", ["--use_iel", "0", "--tuning_style", "full"], 89.38),
    ("ITA-LoRA", "second_order", ["--use_iel", "0", "--tuning_style", "lora"], 89.96),
    ("ITA-(IA)3", "second_order", ["--use_iel", "0", "--tuning_style", "ia3"], 90.66),
    ("IEL-FFT", "second_order", [*IEL, "--tuning_style", "full"], 89.38),
    ("IEL-LoRA", "second_order", [*IEL, "--tuning_style", "lora"], 89.53),
    ("IEL-(IA)3", "second_order", [*IEL, "--tuning_style", "ia3"], 89.72),
]}}
NOT_AVAILABLE = "not available (method not identified)"


def row_dir(row: str) -> str:
    """``'DER++ (buffer 1000)'`` -> ``'der_buffer_1000'``: the row's results folder."""
    return re.sub(r"[^a-z0-9]+", "_", row.lower().replace("(ia)3", "ia3")).strip("_")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paper", description=__doc__.splitlines()[0])
    parser.add_argument("--table", required=True, help=f"paper table: {', '.join(TABLES)}")
    parser.add_argument("--dataset", required=True, help="the table's benchmark, e.g. seq-cifar100-224")
    parser.add_argument("--seeds", type=positive_int, default=3, help="number of seeds")
    parser.add_argument("--first_seed", type=nonneg_int, default=0, help="seeds are first_seed .. first_seed+seeds-1")
    parser.add_argument("--extra", action="append", default=[],
                        help="'MODEL:--flag value ...' or 'ROW_FOLDER:...' (e.g. 'ita_lora:...'): flags of those runs")
    parser.add_argument("--rows", default=None,
                        help="comma-separated row names to run (default: all); the table still lists every row")
    parser.add_argument("--out", default="benchmarks/out/paper", help="output folder (git-ignored by default)")
    parser.add_argument("--reuse", type=parse_bool, default=True, help="reuse complete results already in --out")
    return parser


def table_rows(table: str, dataset: str, only: Optional[str]) -> list[tuple[str, Optional[str], list[str], float]]:
    if table not in TABLES:
        raise UserError(f"--table {table} is not reproduced; available: {', '.join(TABLES)}")
    if dataset not in TABLES[table]:
        raise UserError(f"--table {table} has no column for --dataset {dataset}; use {', '.join(TABLES[table])}")
    rows = TABLES[table][dataset]
    if only is None:
        return rows
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in {r[0] for r in rows}]
    if unknown:
        raise UserError(f"--rows: unknown row '{unknown[0]}'; rows are: {', '.join(r[0] for r in rows)}")
    return [r for r in rows if r[0] in wanted]


def measured(out: str, row: str, seeds: list[int]) -> tuple[list[float], list[int]]:
    """Final class-IL accuracies of the row's complete runs, and their seeds."""
    from app.report import load_result

    values, found = [], []
    for seed in seeds:
        result = load_result(result_path(out, row_dir(row), seed))
        if result is not None and result.get("complete") and result.get("final_class_il") is not None:
            values.append(float(result["final_class_il"]))
            found.append(seed)
    return values, found


def write_table(rows: list[tuple[str, Optional[str], list[str], float]], out: str, seeds: list[int],
                failed: set[str], title: str) -> dict[str, str]:
    """``paper_table<N>.md/.csv/.png`` in ``out``: the paper's number beside the measured mean ± std."""
    from app.report import mean_std
    from utils.tables import csv_text, markdown_table, number, write_tables

    records = []
    for row, model, _, paper in rows:
        values, found = measured(out, row, seeds) if model else ([], [])
        mean, std = mean_std(values)
        status = NOT_AVAILABLE if model is None else "failed" if row in failed and not values else \
            "not run" if not values else ""
        records.append({"method": row, "model": model or "", "paper": paper, "mean": mean, "std": std,
                        "seeds": found, "status": status})
    lines = [f"# Porrello et al. Table {title}: paper vs measured", "",
             "Final class-IL accuracy (%); measured = mean ± sample std over the seeds listed.", ""]
    lines += markdown_table(["method", "model", "paper", "measured", "Δ (measured − paper)", "seeds"], [
        [r["method"], r["model"] or "–", f"{r['paper']:.2f}", r["status"] or f"{r['mean']:.2f} ± {r['std']:.2f}",
         "" if r["status"] else f"{r['mean'] - r['paper']:+.2f}", ", ".join(map(str, r["seeds"]))] for r in records])
    table = csv_text(["method", "model", "paper", "measured_mean", "measured_std", "n_seeds", "status"], [
        [r["method"], r["model"], r["paper"], number(None if r["status"] else r["mean"]),
         number(None if r["status"] else r["std"]), len(r["seeds"]), r["status"]] for r in records])
    paths = write_tables(os.path.join(out, f"paper_table{title}"), lines, table)
    plot_paper_vs_measured(records, paths["png"])
    return paths


def plot_paper_vs_measured(records: list[dict], path: str) -> None:
    """Horizontal bars per method: the paper's number and the measured mean (with its std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.io import atomic_write

    names = [r["method"] for r in records]
    ys = list(range(len(names)))
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    ax.barh([y - 0.2 for y in ys], [r["paper"] for r in records], height=0.4, label="paper", color="#999999")
    got = [(y, r) for y, r in zip(ys, records) if not r["status"]]
    ax.barh([y + 0.2 for y, _ in got], [r["mean"] for _, r in got], xerr=[r["std"] for _, r in got], height=0.4,
            label="measured", color="#1f77b4")
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.set_xlabel("final class-IL accuracy (%)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
    plt.close(fig)


def paper(argv: Optional[list[str]] = None) -> tuple[dict[str, str], list[str]]:
    """Run every row x seed of the table (reusing complete results), then write the table; (paths, failures)."""
    args, shared = parse_with_shared(build_parser(), argv)
    rows = table_rows(args.table, args.dataset, args.rows)
    extras = parse_extras(args.extra)
    every = TABLES[args.table][args.dataset]
    stray = sorted(set(extras) - {r[1] for r in every if r[1]} - {row_dir(r[0]) for r in every})
    if stray:
        raise UserError(f"--extra names {', '.join(stray)}: neither a model nor a row folder of the table "
                        f"({', '.join(row_dir(r[0]) for r in every)})")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = []
    for row, model, flags, _ in rows:
        if model is None:
            print(f"[paper] {row}: {NOT_AVAILABLE}", flush=True)
            continue
        for seed in seeds:
            path = result_path(args.out, row_dir(row), seed)
            jobs.append((row_dir(row), seed, merge_flags(
                ["--model", model, "--dataset", args.dataset, "--model_config", "best"], flags, shared,
                extras.get(model, []), extras.get(row_dir(row), []),
                ["--seed", str(seed), "--results_file", path, "--non_verbose", "1"])))
    _, failures = run_jobs(jobs, args.out, args.reuse, "paper")
    failed = {row for row, *_ in rows if any(f.startswith(f"{row_dir(row)} seed") for f in failures)}
    paths = write_table(every, args.out, seeds, failed, args.table)  # every row: --rows only limits what runs
    print_outcome("paper", paths, failures)
    return paths, failures


def main(argv: Optional[list[str]] = None) -> int:
    return exit_code(lambda: 1 if paper(argv)[1] else 0)


if __name__ == "__main__":
    sys.exit(main())
