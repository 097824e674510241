"""The ``--fisher_precision`` default from numbers: fp32, tf32 and bf16 on the demo's settings over several seeds.

    python -m benchmarks.fisher_precision [--seeds 0 1 2] [--precisions fp32 tf32 bf16] [--out FILE.json]

Each (seed, precision) is one full ``second_order`` ITA run with the settings of ``make demo`` (app/demo.py:
CIFAR-100 mini as 10 tasks x 10 classes, EfficientNet-Lite0 ImageNet weights at 96 px, one epoch) and
``--savecheck task``. Runs of one seed differ only in ``--fisher_precision``. Per precision it prints

* the Fisher's relative error against the fp32 run of the same seed: ``||F_t - F_t^fp32|| / ||F_t^fp32||`` over all
  adapted layers, for every task t but the last (F_t = the difference of the Fisher sums of consecutive checkpoints;
  the last checkpoint leaves them out), the largest over tasks and seeds;
* the seconds of the Fisher passes (all tasks, summed) and the final class-IL accuracy, mean +- std over seeds;

and the rule's verdict: the fastest precision whose Fisher rel. err is <= 1e-2 and whose mean final class-IL lies
within 0.2 points of fp32's. On a CPU there is no TF32 (tf32 computes exactly what fp32 computes) and bf16 runs
emulated, so the times there do not rank the precisions as a GPU would. Flags it does not know are passed to
every run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from app.demo import ITA_ARGS, real_data_args  # noqa: E402
from app.runner import run  # noqa: E402
from utils import checkpoints  # noqa: E402
from utils import accelerator  # noqa: E402
from utils.io import write_json  # noqa: E402

MAX_REL_ERR, MAX_CIL_DROP = 1e-2, 0.2  # the rule of issue 14


class FisherTimer:
    """Sums the wall-clock seconds of ``TaskStatistics.compute_fisher`` (second_order's Fisher pass; patched on
    the class, restored on exit)."""

    def __init__(self) -> None:
        from models.second_order_utils.task_stats import TaskStatistics
        self.cls, self.seconds = TaskStatistics, 0.0
        if not hasattr(TaskStatistics, "compute_fisher"):
            raise RuntimeError("TaskStatistics.compute_fisher not found: update benchmarks/fisher_precision.py")

    def __enter__(self) -> "FisherTimer":
        original = self.original = self.cls.compute_fisher
        timer = self

        def timed(model: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(model, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start
        self.cls.compute_fisher = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cls.compute_fisher = self.original


def task_fishers(folder: str) -> list[torch.Tensor]:
    """F_t (all layers, flattened) of every task whose checkpoint holds the Fisher sums, from their differences."""
    sums, t = [], 1
    while os.path.isfile(path := os.path.join(folder, f"task_{t}.pt")):
        state = checkpoints.load_checkpoint(path)["model_state"]
        if "fisher_past" not in state:
            break
        sums.append(torch.cat([v.double().flatten() for _, v in sorted(state["fisher_past"].items())]))
        os.remove(path)
        t += 1
    return [(s - (sums[i - 1] if i else 0)).float() for i, s in enumerate(sums)]


def override(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with every ``--flag [values]`` that ``extra`` also gives replaced by ``extra``'s."""
    given = {t for t in extra if t.startswith("--")}
    kept, skipping = [], False
    for token in base:
        if token.startswith("--"):
            skipping = token in given
        if not skipping:
            kept.append(token)
    return [*kept, *extra]


def one_run(data: str, precision: str, seed: int, workdir: str, img_size: int, extra: list[str]) -> dict[str, Any]:
    tag = f"{precision}_s{seed}"
    argv = override(["--model", "second_order", *real_data_args(data, img_size), *ITA_ARGS, "--n_epochs", "1",
                     "--non_verbose", "--plots", "0", "--base_path", os.path.join(workdir, "data")],
                    [*extra, "--fisher_precision", precision, "--seed", str(seed), "--savecheck", "task",
                     "--checkpoint_path", os.path.join(workdir, "ckpt"), "--ckpt_name", tag,
                     "--results_file", os.path.join(workdir, f"{tag}.json")])
    start = time.perf_counter()
    with FisherTimer() as timer:
        res = run(argv)
    fishers = task_fishers(os.path.join(workdir, "ckpt", tag))
    return {"precision": precision, "seed": seed, "final_class_il": float(res["final_class_il"]),
            "tasks_done": int(res["tasks_done"]),
            "fisher_seconds": timer.seconds, "run_seconds": time.perf_counter() - start, "fishers": fishers}


def rel_err(approx: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """The largest per-task relative Frobenius error."""
    if not exact or len(approx) != len(exact):
        raise RuntimeError(f"{len(approx)} and {len(exact)} task Fishers: the runs did not save the same tasks")
    return max(float((a - e).norm() / e.norm()) for a, e in zip(approx, exact))


def verdict(summary: dict[str, dict[str, Any]]) -> tuple[Optional[str], list[str]]:
    """(the fastest eligible precision, the eligible ones) under the rule."""
    base = summary["fp32"]["class_il_mean"]
    ok = [p for p, s in summary.items()
          if s["fisher_rel_err"] <= MAX_REL_ERR and abs(s["class_il_mean"] - base) <= MAX_CIL_DROP]
    return (min(ok, key=lambda p: summary[p]["fisher_seconds_mean"]) if ok else None), ok


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar100_mini.npz", help="CIFAR-100 mini npz")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "bf16"], choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--img_size", type=int, default=96)
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    opts, extra = parser.parse_known_args(argv)
    precisions = ["fp32"] + [p for p in opts.precisions if p != "fp32"]  # the reference always runs
    workdir = tempfile.mkdtemp(prefix="fisher_precision_")
    device = str(accelerator.default_device())
    runs: list[dict[str, Any]] = []
    try:
        for seed in opts.seeds:  # seed-major: an interrupted benchmark still has complete seeds
            reference: list[torch.Tensor] = []
            for precision in precisions:
                r = one_run(opts.data, precision, seed, workdir, opts.img_size, extra)
                fishers = r.pop("fishers")
                reference = reference or fishers  # fp32 runs first
                r["fisher_rel_err"] = rel_err(fishers, reference)
                runs.append(r)
                print(f"seed {seed} {precision}: class-IL {r['final_class_il']:.2f} %, Fisher rel err "
                      f"{r['fisher_rel_err']:.2e}, Fisher passes {r['fisher_seconds']:.1f} s, run "
                      f"{r['run_seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    for p in precisions:
        mine = [r for r in runs if r["precision"] == p]
        cil = [r["final_class_il"] for r in mine]
        summary[p] = {"seeds": [r["seed"] for r in mine], "class_il": cil, "class_il_mean": statistics.mean(cil),
                      "class_il_std": statistics.stdev(cil) if len(cil) > 1 else 0.0,
                      "fisher_rel_err": max(r["fisher_rel_err"] for r in mine),
                      "fisher_seconds_mean": statistics.mean(r["fisher_seconds"] for r in mine),
                      "run_seconds_mean": statistics.mean(r["run_seconds"] for r in mine)}
    best, eligible = verdict(summary)
    print(f"\n{'precision':9s} {'Fisher rel err':>14s} {'class-IL (mean +- std)':>23s} {'Fisher s':>9s} {'run s':>7s}"
          f"   ({device}, seeds {' '.join(map(str, opts.seeds))}, {runs[0]['tasks_done']} tasks)")
    for p, s in summary.items():
        print(f"{p:9s} {s['fisher_rel_err']:14.2e} {s['class_il_mean']:14.2f} +- {s['class_il_std']:4.2f} "
              f"{s['fisher_seconds_mean']:9.1f} {s['run_seconds_mean']:7.0f}")
    print(f"rule (Fisher rel err <= {MAX_REL_ERR:g}, class-IL within {MAX_CIL_DROP} of fp32): eligible "
          f"{', '.join(eligible) or 'none'}; fastest eligible on this device: {best}")
    if device == "cpu":
        print("on a CPU tf32 is fp32 (no TF32 units) and bf16 is emulated: the speed ranking needs a GPU")
    if opts.out:
        write_json(opts.out, {"device": device, "seeds": opts.seeds, "summary": summary, "eligible": eligible,
                              "fastest_eligible": best, "max_rel_err": MAX_REL_ERR, "max_class_il_drop": MAX_CIL_DROP})
    return 0


if __name__ == "__main__":
    sys.exit(main())
