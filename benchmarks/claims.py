"""The paper's claims measured: composition, specialization, unlearning, and what the Fisher penalties change.

    python -m benchmarks.claims --out benchmarks/out/claims

Runs ``benchmarks.editing`` (train once, then every edit of the protocol) for each dataset and seed with four
methods: ITA and IEL with the demo's settings (``app/demo.py``), ITA without its penalties (``ita_free``:
``--alpha_ita 0`` and the head regulariser off) and Task Arithmetic (``ta``: each task's module and head
fine-tuned alone from theta0, no penalty, no pre-tuning, no alignment; composed by averaging). Datasets: seeded
class-balanced subsets (``benchmarks.mini_data``) of MNIST, Fashion-MNIST and CIFAR-10 as 5 tasks x 2, and
CIFAR-100 mini as 10 x 10 (``--natural_seeds``), EfficientNet-Lite0 (ImageNet) at ``--img_size`` px, one epoch.
Resumable: a finished run or edit in ``--out`` is reused. Writes ``claims.md`` (mean +- std over seeds and the
goals, held or not, on every dataset), ``claims.json`` and ``claims.png`` (grouped bars per dataset).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Optional

from benchmarks.compare import exit_code, merge_flags
from utils.errors import UserError

METHOD_LABELS = {"ita": "ITA", "iel": "IEL", "ita_free": "ITA without penalties", "ta": "Task Arithmetic",
                 # diagnostics (not in the default --methods): the same without the end-of-task head alignment
                 "ita_noca": "ITA, --use_ca 0", "ita_free_noca": "ITA without penalties, --use_ca 0"}
NO_PENALTY = ["--alpha_ita", "0", "--req_weight_cls", "0", "--simple_reg_weight_cls", "0"]
NO_CA = ["--use_ca", "0"]
ALONE = ["--use_ca", "0", "--num_epochs_pretuning", "0", "--num_epochs_align_pretuning", "0"]
# dataset -> (npz file in <out>/data; tasks; natural: CIFAR-100 mini (--c100), whole, with --natural_seeds)
DATASETS = {"mnist": ("mnist5k_mini.npz", 5, False), "fmnist": ("fmnist_mini.npz", 5, False),
            "c10": ("cifar10_small.npz", 5, False), "c100": ("", 10, True)}
DATASET_LABELS = {"mnist": "MNIST", "fmnist": "Fashion-MNIST", "c10": "CIFAR-10 subset", "c100": "CIFAR-100 mini"}
METRICS = {  # key -> column title
    "class_il": "class-IL", "task_il": "task-IL", "theta0": "θ0, same heads",
    "unlearn_target": "drop: target Δ", "unlearn_control": "drop: control Δ",
    "single": "module alone: Δ", "trio": "trio: Δ", "gap": "composition gap (task-IL)",
    "unlearn_target_til": "drop: target Δ task-IL", "unlearn_control_til": "drop: control Δ task-IL"}
PLOTTED = ("unlearn_target", "unlearn_control", "single", "trio", "gap")


def method_flags(label: str) -> tuple[str, list[str]]:
    """(model, flags) of a method of the table."""
    from app.demo import IEL_ARGS, ITA_ARGS

    flags = {"ita": ITA_ARGS, "iel": IEL_ARGS, "ita_free": merge_flags(ITA_ARGS, NO_PENALTY),
             "ta": merge_flags(ITA_ARGS, NO_PENALTY, ALONE), "ita_noca": merge_flags(ITA_ARGS, NO_CA),
             "ita_free_noca": merge_flags(ITA_ARGS, NO_PENALTY, NO_CA)}
    if label not in flags:
        raise UserError(f"--methods: unknown method '{label}'; choose from {', '.join(METHOD_LABELS)}")
    return ("iel" if label == "iel" else "ita"), list(flags[label])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def seed_metrics(records: list[dict[str, Any]]) -> dict[str, float]:
    """The table's numbers for one run from its editing records (differences in points, edited - full)."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    full = by_kind["check"][0]
    singles, drops = by_kind["specialize-single"], by_kind["unlearn"]
    trio = by_kind["specialize"][-1]
    return {
        "class_il": _mean(full["per_task_before"]), "task_il": _mean(full["per_task_til_before"]),
        "theta0": by_kind["theta0"][0]["target_after"],
        "unlearn_target": _mean([r["target_after"] - r["target_before"] for r in drops]),
        "unlearn_control": _mean([r["control_after"] - r["control_before"] for r in drops]),
        "single": _mean([r["target_after"] - r["target_before"] for r in singles]),
        "trio": trio["target_after"] - trio["target_before"],
        # each module alone on its own task minus the composition on that task, within the task (task-IL)
        "gap": _mean([r["per_task_til_after"][r["targets"][0]] - r["per_task_til_before"][r["targets"][0]]
                      for r in singles]),
        # the same drops within each task (task-IL): what the module knows of its task, without the calibration
        # of the heads across tasks
        "unlearn_target_til": _mean([_til_change(r, r["targets"]) for r in drops]),
        "unlearn_control_til": _mean([_til_change(r, [t for t in range(len(r["weights"])) if t not in r["targets"]])
                                      for r in drops])}


def _til_change(record: dict[str, Any], tasks: list[int]) -> float:
    """Mean task-IL change (edited - full) of ``tasks`` in one edit record."""
    return _mean([record["per_task_til_after"][t] - record["per_task_til_before"][t] for t in tasks])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = _mean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def aggregate(per_seed: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> method -> metric -> {mean, std, n, values}."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset, methods in per_seed.items():
        for method, seeds in methods.items():
            if not seeds:
                continue
            cell = out.setdefault(dataset, {}).setdefault(method, {})
            for key in METRICS:
                values = [s[key] for s in seeds]
                mean, std = mean_std(values)
                cell[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def goals(table: dict[str, dict[str, dict[str, Any]]], datasets: tuple[str, ...] = ("mnist", "fmnist")
          ) -> list[tuple[str, bool, str]]:
    """(goal, held, the numbers) for each goal written before running, on ``datasets`` (means over seeds)."""
    found = []

    def m(dataset: str, method: str, key: str) -> Optional[float]:
        return table.get(dataset, {}).get(method, {}).get(key, {}).get("mean")

    for dataset in datasets:
        name = DATASET_LABELS[dataset]
        for method in ("ita", "iel"):
            target, control = m(dataset, method, "unlearn_target"), m(dataset, method, "unlearn_control")
            if target is not None:
                found.append((f"{name}, {METHOD_LABELS[method]}: dropping a module, target ≤ -10, control within ±2",
                              target <= -10 and abs(control) <= 2, f"target {target:+.1f}, control {control:+.1f}"))
            single, trio = m(dataset, method, "single"), m(dataset, method, "trio")
            if single is not None:
                found.append((f"{name}, {METHOD_LABELS[method]}: a specialist ≥ the full composition on its tasks",
                              single >= 0 and trio >= 0, f"module alone {single:+.1f}, trio {trio:+.1f}"))
        for penalised, other in (("ita", "ita_free"), ("ita", "ta"), ("ita_noca", "ita_free_noca")):
            gap, gap_other = m(dataset, penalised, "gap"), m(dataset, other, "gap")
            cil, cil_other = m(dataset, penalised, "class_il"), m(dataset, other, "class_il")
            if gap is not None and gap_other is not None:
                found.append((f"{name}: with the penalties ({METHOD_LABELS[penalised]}) a smaller composition gap and "
                              f"a higher class-IL than {METHOD_LABELS[other]}", gap < gap_other and cil > cil_other,
                              f"gap {gap:+.1f} vs {gap_other:+.1f}; class-IL {cil:.1f} vs {cil_other:.1f}"))
    return found


def cell(entry: Optional[dict[str, Any]], signed: bool) -> str:
    if entry is None:
        return "–"
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(entry['mean'])} ± {entry['std']:.1f}"


def markdown(table: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines = ["# The paper's claims: composition, specialization, unlearning", "",
             "Mean ± std over seeds (n = number of seeds). Accuracies in %, Δ in points (edited - full composition, "
             "class-IL; the composition gap in task-IL: module alone on its task - composition on that task).", "",
             "| dataset | method | n | " + " | ".join(METRICS.values()) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    for dataset, methods in table.items():
        for method, metrics in methods.items():
            n = next(iter(metrics.values()))["n"]
            cells = [cell(metrics.get(k), k not in ("class_il", "task_il", "theta0")) for k in METRICS]
            lines.append(f"| {DATASET_LABELS[dataset]} | {METHOD_LABELS[method]} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "## Goals (written before running for MNIST and Fashion-MNIST; the same tests on every dataset)", ""]
    lines += [f"- {'held' if held else 'NOT held'}: {goal} ({numbers})"
              for goal, held, numbers in goals(table, tuple(table))]
    return lines


def plot(table: dict[str, dict[str, dict[str, Any]]], path: str) -> str:
    """Grouped bars per dataset: the editing metrics (groups) for each method (bars), std as error bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(table)
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.4), squeeze=False, sharey=True)
    for ax, dataset in zip(axes[0], datasets):
        methods = list(table[dataset])
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(PLOTTED))]
            means = [table[dataset][method][k]["mean"] for k in PLOTTED]
            stds = [table[dataset][method][k]["std"] for k in PLOTTED]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=METHOD_LABELS[method])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(PLOTTED)))
        ax.set_xticklabels(["drop:\ntarget", "drop:\ncontrol", "module\nalone", "trio", "comp.\ngap"], fontsize=7)
        ax.set_title(DATASET_LABELS[dataset], fontsize=9)
    axes[0][0].set_ylabel("points (edited - full)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def prepare_data(dataset: str, path: str, args: argparse.Namespace) -> None:
    """Write the seeded class-balanced subset of ``dataset`` (``benchmarks.mini_data``) to ``path``."""
    import numpy as np

    from benchmarks.mini_data import write_subset

    if dataset == "c10":
        if not os.path.isfile(args.cifar10):
            raise UserError(f"{args.cifar10} not found; pass --cifar10 PATH to cifar10_mini.npz")
        with np.load(args.cifar10) as npz:
            arrays = [npz[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        source = args.cifar10
    else:
        from datasets.utils.mnist import load_mnist_like

        data = load_mnist_like("mnist" if dataset == "mnist" else "fashion-mnist",
                               os.path.join(os.path.dirname(path), "raw"))
        arrays, source = [data.train.data, data.train.targets, data.test.data, data.test.targets], data.source
    write_subset(path, *arrays, args.train_per_class, args.test_per_class, 0, source)


def shared_flags(data: str, n_tasks: int, seed: int, img_size: int, base: str) -> list[str]:
    return ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", str(n_tasks), "--img_size", str(img_size),
            "--normalization", "half", "--backbone", "efficientnet_lite0", "--seed", str(seed), "--n_epochs", "1",
            "--plots", "0", "--base_path", base]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.claims", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/out/claims")
    parser.add_argument("--datasets", default="mnist,fmnist,c10,c100", help=f"from {', '.join(DATASETS)}")
    parser.add_argument("--methods", default="ita,iel,ita_free,ta", help=f"from {', '.join(METHOD_LABELS)}")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the 5 x 2 datasets")
    parser.add_argument("--natural_seeds", default="0", help="seeds of CIFAR-100 mini (each run is ~5x longer)")
    parser.add_argument("--img_size", type=int, default=32)
    parser.add_argument("--train_per_class", type=int, default=60)
    parser.add_argument("--test_per_class", type=int, default=30)
    parser.add_argument("--c100", default="../shared/data/cifar100_mini.npz", help="CIFAR-100 mini npz")
    parser.add_argument("--cifar10", default="../shared/data/cifar10_mini.npz", help="CIFAR-10 mini npz")
    parser.add_argument("--run", type=int, default=1, help="0: only aggregate what is already in --out")
    parser.add_argument("--device", default="cpu")
    return parser


def claims(argv: Optional[list[str]] = None) -> dict[str, Any]:
    from benchmarks.editing import editing, records_path

    args = build_parser().parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for d in datasets:
        if d not in DATASETS:
            raise UserError(f"--datasets: unknown '{d}'; choose from {', '.join(DATASETS)}")
    flags = {m: method_flags(m) for m in methods}
    data_dir = os.path.join(args.out, "data")
    per_seed: dict[str, dict[str, list[dict[str, float]]]] = {}
    for dataset in datasets:
        file, n_tasks, natural = DATASETS[dataset]
        data = args.c100 if natural else os.path.join(data_dir, file)
        if args.run and not natural and not os.path.isfile(data):
            prepare_data(dataset, data, args)
        for seed in (int(s) for s in (args.natural_seeds if natural else args.seeds).split(",") if s.strip()):
            out = os.path.join(args.out, dataset, f"s{seed}")
            if args.run:
                editing(["--methods", ",".join(f"{m}={flags[m][0]}" for m in methods), "--out", out,
                         "--device", args.device, *[x for m in methods for x in ("--extra", f"{m}:{' '.join(flags[m][1])}")],
                         "--", *shared_flags(data, n_tasks, seed, args.img_size, os.path.join(args.out, "base"))])
            for method in methods:
                try:
                    with open(records_path(out, method)) as fh:
                        records = json.load(fh)["records"]
                except (OSError, ValueError, KeyError):
                    continue
                if records and "per_task_til_after" in records[0]:
                    per_seed.setdefault(dataset, {}).setdefault(method, []).append(seed_metrics(records))
    table = aggregate(per_seed)
    from utils.io import atomic_write, write_json

    os.makedirs(args.out, exist_ok=True)
    paths = {"markdown": os.path.join(args.out, "claims.md"), "json": os.path.join(args.out, "claims.json"),
             "png": os.path.join(args.out, "claims.png")}
    text = "\n".join(markdown(table)) + "\n"
    atomic_write(paths["markdown"], lambda fh: fh.write(text))
    write_json(paths["json"], {"table": table, "goals": [list(g) for g in goals(table, tuple(table))]})
    if table:
        plot(table, paths["png"])
    print(text, flush=True)
    return {"paths": paths, "table": table}


def main(argv: Optional[list[str]] = None) -> int:
    def run() -> int:
        claims(argv)
        return 0
    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
