"""Precision defaults from numbers: TF32 and the bf16 training forward against fp32, over seeds and datasets.

    python -m benchmarks.fisher_precision [--data A.npz B.npz] [--seeds 0 1 2] [--variants fp32 tf32 O2 bf16]
                                          [--out FILE.json] [run flags ...]

Each (dataset, seed, variant) is one ``second_order`` ITA run with ``--savecheck task``; runs of one dataset and seed
differ only in the variant:

* ``fp32``: ``-O 0 --fisher_precision fp32`` (the reference);
* ``tf32``: ``-O 1 --fisher_precision tf32``: TF32 for the Fisher pass and every training and evaluation matmul; on a
  CPU the whole run is under :class:`utils.tf32_emulation.TF32Emulation` (operands rounded to TF32, fp32 sums);
* ``O2``: ``-O 2 --fisher_precision fp32``: bf16 autocast of the training and evaluation forwards (torch's CPU
  autocast on a CPU), the Fisher in fp32;
* ``bf16``: ``-O 0 --fisher_precision bf16`` (the bf16 Fisher GEMMs).

Per variant and dataset it prints the Fisher's largest per-task relative error against the fp32 run of the same
seed (``||F_t - F_t^fp32|| / ||F_t^fp32||`` over all adapted layers, F_t from the differences of consecutive
checkpoints' Fisher sums, every task but the last), the final class-IL per seed and the mean paired change against
fp32, the Fisher passes' seconds, and the verdict of the rule of docs/speed.md: a variant passes when on every
dataset the mean paired class-IL change is no worse than -0.5 points and, for the variants that change the Fisher
(tf32, bf16), its relative error is at most 1e-2. Flags it does not know are passed to every run (after the small
defaults below, which they override).
"""
from __future__ import annotations

import argparse
import contextlib
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
from utils.tf32_emulation import TF32Emulation  # noqa: E402

MAX_REL_ERR, MAX_CIL_DROP = 1e-2, 0.5  # the rule of docs/speed.md
VARIANTS = {"fp32": ["-O", "0", "--fisher_precision", "fp32"], "tf32": ["-O", "1", "--fisher_precision", "tf32"],
            "O2": ["-O", "2", "--fisher_precision", "fp32"], "bf16": ["-O", "0", "--fisher_precision", "bf16"]}
CHANGES_FISHER = ("tf32", "bf16")
# small enough for a CPU: 5 tasks, 32 px, one epoch, the demo's top-1 Fisher, short alignments
SMALL = ["--n_tasks", "5", "--use_ca", "0", "--num_epochs_align_pretuning", "2",
         "--num_samples_align_pretuning", "32"]


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


def one_run(data: str, variant: str, seed: int, workdir: str, img_size: int, extra: list[str]) -> dict[str, Any]:
    tag = f"{os.path.basename(data).split('.')[0]}_{variant}_s{seed}"
    base = override(["--model", "second_order", *real_data_args(data, img_size), *ITA_ARGS, "--n_epochs", "1",
                     "--non_verbose", "--plots", "0", "--base_path", os.path.join(workdir, "data")], SMALL)
    argv = override(base, extra)
    argv = override(argv, [*VARIANTS[variant], "--seed", str(seed), "--savecheck", "task",
                           "--checkpoint_path", os.path.join(workdir, "ckpt"), "--ckpt_name", tag,
                           "--results_file", os.path.join(workdir, f"{tag}.json")])
    emulate = variant == "tf32" and not accelerator.tf32_available()
    start = time.perf_counter()
    with FisherTimer() as timer, (TF32Emulation() if emulate else contextlib.nullcontext()):
        res = run(argv)
    fishers = task_fishers(os.path.join(workdir, "ckpt", tag))
    return {"variant": variant, "seed": seed, "final_class_il": float(res["final_class_il"]),
            "tasks_done": int(res["tasks_done"]), "tf32_emulated": emulate,
            "fisher_seconds": timer.seconds, "run_seconds": time.perf_counter() - start, "fishers": fishers}


def rel_err(approx: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """The largest per-task relative Frobenius error."""
    if not exact or len(approx) != len(exact):
        raise RuntimeError(f"{len(approx)} and {len(exact)} task Fishers: the runs did not save the same tasks")
    return max(float((a - e).norm() / e.norm()) for a, e in zip(approx, exact))


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: per dataset the class-IL of each seed, the mean paired change against fp32 and the largest
    Fisher error; the seconds averaged over all runs."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        per_data: dict[str, Any] = {}
        for data in dict.fromkeys(r["data"] for r in runs):
            mine = sorted((r for r in runs if r["variant"] == variant and r["data"] == data), key=lambda r: r["seed"])
            base = {r["seed"]: r["final_class_il"] for r in runs if r["variant"] == "fp32" and r["data"] == data}
            changes = [r["final_class_il"] - base[r["seed"]] for r in mine]
            per_data[data] = {"seeds": [r["seed"] for r in mine], "class_il": [r["final_class_il"] for r in mine],
                              "class_il_change": changes, "class_il_change_mean": statistics.mean(changes),
                              "class_il_change_sem": (statistics.stdev(changes) / len(changes) ** 0.5
                                                      if len(changes) > 1 else 0.0),
                              "fisher_rel_err": max(r["fisher_rel_err"] for r in mine)}
        mine = [r for r in runs if r["variant"] == variant]
        out[variant] = {"datasets": per_data, "fisher_rel_err": max(d["fisher_rel_err"] for d in per_data.values()),
                        "worst_class_il_change": min(d["class_il_change_mean"] for d in per_data.values()),
                        "fisher_seconds_mean": statistics.mean(r["fisher_seconds"] for r in mine),
                        "run_seconds_mean": statistics.mean(r["run_seconds"] for r in mine)}
    return out


def passes(variant: str, s: dict[str, Any]) -> bool:
    """The rule of docs/speed.md for one variant's summary."""
    fisher_ok = variant not in CHANGES_FISHER or s["fisher_rel_err"] <= MAX_REL_ERR
    return fisher_ok and s["worst_class_il_change"] >= -MAX_CIL_DROP


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["../shared/data/cifar100_mini.npz",
                                                      "../shared/data/cifar10_mini.npz"], help="npz datasets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["fp32", "tf32", "O2"], choices=list(VARIANTS))
    parser.add_argument("--img_size", type=int, default=32)
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    opts, extra = parser.parse_known_args(argv)
    variants = ["fp32"] + [v for v in opts.variants if v != "fp32"]  # the reference always runs first
    workdir = tempfile.mkdtemp(prefix="fisher_precision_")
    device = str(accelerator.default_device())
    runs: list[dict[str, Any]] = []
    try:
        for data in opts.data:
            for seed in opts.seeds:  # seed-major: an interrupted benchmark still has complete seeds
                reference: list[torch.Tensor] = []
                for variant in variants:
                    r = one_run(data, variant, seed, workdir, opts.img_size, extra)
                    fishers = r.pop("fishers")
                    reference = reference or fishers
                    r["fisher_rel_err"], r["data"] = rel_err(fishers, reference), os.path.basename(data)
                    runs.append(r)
                    print(f"{r['data']} seed {seed} {variant}: class-IL {r['final_class_il']:.2f} %, Fisher rel err "
                          f"{r['fisher_rel_err']:.2e}, Fisher passes {r['fisher_seconds']:.1f} s, run "
                          f"{r['run_seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs)
    verdicts = {v: passes(v, s) for v, s in summary.items()}
    print(f"\n({device}{', TF32 emulated' if device == 'cpu' else ''}; seeds {' '.join(map(str, opts.seeds))}, "
          f"{runs[0]['tasks_done']} tasks)")
    print(f"{'variant':8s} {'dataset':18s} {'Fisher rel err':>14s} {'class-IL per seed':>24s} {'mean change':>16s}")
    for v, s in summary.items():
        for data, d in s["datasets"].items():
            print(f"{v:8s} {data:18s} {d['fisher_rel_err']:14.2e} {' '.join(f'{c:6.2f}' for c in d['class_il']):>24s} "
                  f"{d['class_il_change_mean']:+7.2f} +- {d['class_il_change_sem']:4.2f}")
    print(f"rule (Fisher rel err <= {MAX_REL_ERR:g} for {'/'.join(CHANGES_FISHER)}, mean class-IL change >= "
          f"-{MAX_CIL_DROP} on every dataset): " + ", ".join(f"{v} {'passes' if ok else 'fails'}"
                                                              for v, ok in verdicts.items() if v != "fp32"))
    if opts.out:
        write_json(opts.out, {"device": device, "seeds": opts.seeds, "summary": summary, "passes": verdicts,
                              "runs": runs, "max_rel_err": MAX_REL_ERR, "max_class_il_drop": MAX_CIL_DROP})
    return 0


if __name__ == "__main__":
    sys.exit(main())
