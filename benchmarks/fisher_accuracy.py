"""Effect of the approximate Fisher on final accuracy: ITA with the exact Fisher against
``--fisher_sampled_labels k`` (or, with ``--compare_precision P``, against ``--fisher_precision P``) over several
seeds, side by side in one run (docs/speed.md).

    python benchmarks/fisher_accuracy.py --seeds 0 1 2 --out fisher_accuracy.json
    python benchmarks/fisher_accuracy.py --seeds 0 1 2 --compare_precision bf16 --out fisher_bf16.json

Flags it does not know are passed to every run (e.g. ``--backbone vit_tiny --embed_dim 32``).

Every run is a full ``second_order`` run (CIFAR-100 mini, 10 tasks x 10 classes, EfficientNet-Lite0);
the table gives each seed's final class-IL accuracy for both estimators, their difference, the time of
each run, and the mean difference with its standard error.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.io import write_json  # noqa: E402
from app.runner import run  # noqa: E402

# Settings under which the modules do move (5 epochs at lr 0.003), so the Fisher's weights matter.
ITA_ARGS = ["--model", "ita", "--alpha_ita", "1", "--req_weight_cls", "0.01", "--simple_reg_weight_cls", "0.3",
            "--n_epochs", "5", "--batch_size", "16", "--lr", "0.003", "--num_epochs_pretuning", "1",
            "--num_epochs_align_pretuning", "5", "--num_samples_align_pretuning", "32",
            "--batch_size_align_pretuning", "32", "--stats_batch_size", "256"]


def final_accuracy(common: list[str], seed: int, estimator: list[str], workdir: str,
                   extra: list[str]) -> tuple[float, float]:
    """(final class-IL accuracy, seconds) of one run."""
    tag = "_".join(estimator).replace("--", "") or "exact"
    start = time.perf_counter()
    res = run([*common, *ITA_ARGS, *estimator, *extra, "--seed", str(seed), "--non_verbose",
               "--results_file", os.path.join(workdir, f"{tag}_s{seed}.json")])
    return float(res["final_class_il"]), time.perf_counter() - start


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar100_mini.npz", help="CIFAR-100 mini npz")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--img_size", type=int, default=32)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--n_tasks", type=int, default=10)
    parser.add_argument("--sampled_labels", type=int, default=1, help="k of --fisher_sampled_labels")
    parser.add_argument("--compare_precision", default=None, choices=["tf32", "bf16"],
                        help="compare the exact Fisher in fp32 with this --fisher_precision instead of sampled labels")
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    opts, extra = parser.parse_known_args(argv)
    workdir = tempfile.mkdtemp(prefix="fisher_accuracy_")
    common = ["--dataset", "seq-custom", "--data_path", opts.data, "--n_tasks", str(opts.n_tasks), "--img_size",
              str(opts.img_size), "--normalization", "half", "--backbone", opts.backbone,
              "--base_path", os.path.join(workdir, "data")]
    approx = ["--fisher_sampled_labels", str(opts.sampled_labels)] if opts.compare_precision is None else \
        ["--fisher_precision", opts.compare_precision]
    label = f"sampled k={opts.sampled_labels}" if opts.compare_precision is None else opts.compare_precision
    rows = []
    for seed in opts.seeds:
        exact_acc, exact_s = final_accuracy(common, seed, [], workdir, extra)
        approx_acc, approx_s = final_accuracy(common, seed, approx, workdir, extra)
        rows.append({"seed": seed, "exact": exact_acc, "approx": approx_acc, "diff": approx_acc - exact_acc,
                     "exact_s": exact_s, "approx_s": approx_s})
        print(f"seed {seed}: exact {exact_acc:.2f} % ({exact_s:.0f} s)  {label} "
              f"{approx_acc:.2f} % ({approx_s:.0f} s)", flush=True)
    diffs = [r["diff"] for r in rows]
    sem = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    summary = {"img_size": opts.img_size, "compared": approx, "sampled_labels": opts.sampled_labels, "runs": rows,
               "mean_exact": statistics.mean(r["exact"] for r in rows),
               "mean_approx": statistics.mean(r["approx"] for r in rows),
               "mean_diff": statistics.mean(diffs), "mean_abs_diff": statistics.mean(abs(d) for d in diffs),
               "sem_diff": sem, "run_time_ratio": sum(r["exact_s"] for r in rows) / sum(r["approx_s"] for r in rows)}
    print(f"{'seed':>4s} {'exact %':>8s} {'approx %':>9s} {'diff':>7s} {'exact s':>8s} {'approx s':>9s}")
    for r in rows:
        print(f"{r['seed']:4d} {r['exact']:8.2f} {r['approx']:9.2f} {r['diff']:7.2f} {r['exact_s']:8.0f} "
              f"{r['approx_s']:9.0f}")
    print(f"mean: exact {summary['mean_exact']:.2f}, approx {summary['mean_approx']:.2f}, difference "
          f"{summary['mean_diff']:+.2f} +- {sem:.2f} (s.e.), mean |difference| {summary['mean_abs_diff']:.2f}; "
          f"whole-run time exact/approx {summary['run_time_ratio']:.2f}")
    if opts.out:
        write_json(opts.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
