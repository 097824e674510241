"""Precision defaults from numbers: TF32 and the bf16 training forward against fp32, over seeds and datasets.

    python -m benchmarks.fisher_precision [--data A.npz B.npz] [--seeds 0 1 2] [--variants fp32 tf32 O2 bf16]
                                          [--train_per_class N] [--test_per_class N] [--tf32_dense] [--out FILE.json]
                                          [run flags ...]

Each (dataset, seed, variant) is one ``second_order`` ITA run with ``--savecheck task``; runs of one dataset and seed
differ only in the variant:

* ``fp32``: ``-O 0 --fisher_precision fp32`` (the reference);
* ``tf32``: ``-O 1 --fisher_precision tf32``: TF32 for the Fisher pass and every training and evaluation matmul; on a
  CPU the whole run is under :class:`utils.tf32_emulation.TF32Emulation` (operands rounded to TF32, fp32 sums);
* ``O2``: ``-O 2 --fisher_precision fp32``: bf16 autocast of the training and evaluation forwards (torch's CPU
  autocast on a CPU), the Fisher in fp32;
* ``bf16``: ``-O 0 --fisher_precision bf16`` (the bf16 Fisher GEMMs);
* ``bf16x3``: ``-O 0 --fisher_precision bf16x3`` (every Fisher GEMM as three bf16 products with fp32 sums,
  ``utils/split_precision.py``; computed the same way on a CPU);
* ``x3tf32``: ``-O 1 --fisher_precision bf16x3``: the bf16x3 Fisher and TF32 for the training and evaluation
  matmuls; on a CPU under ``TF32Emulation(follow_switches=True)`` (TF32 where CUDA's switches would allow it).

The Fisher criterion (docs/speed.md, as amended): in every fp32 run, at each task, right after the run's own Fisher
pass and on the same network at theta0, pre-tuned head and images (:class:`PairedFisher`), the Fisher pass runs again
in fp32 and in the precision of each requested variant that changes the Fisher (tf32, bf16, bf16x3; x3tf32 pairs
with bf16x3), for the exact estimator (every seen class) and the demo's top-1 one; the error is
``||F_t^p - F_t^fp32|| / ||F_t^fp32||`` over all adapted layers. Also reported, not ruled on: the first measure,
the difference of the two runs' saved Fisher sums (F_t from consecutive checkpoints), which includes the runs'
divergence.

Per variant and dataset it prints the largest paired error, the final class-IL per seed and the mean paired change
against fp32, and the verdict: a variant passes when on every dataset the mean paired class-IL change is no worse than
-0.5 points and, for the variants that change the Fisher, every paired error is at most 1e-2. ``--train_per_class`` /
``--test_per_class`` keep the first N images of each class (a copy in a temporary folder). Flags it does not know
are passed to every run (after the small defaults below, which they override).
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
from typing import Any, ContextManager, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from app.demo import ITA_ARGS, real_data_args  # noqa: E402
from app.runner import run  # noqa: E402
from models.second_order_utils.fisher import network_fisher  # noqa: E402
from utils import checkpoints  # noqa: E402
from utils import accelerator  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.tf32_emulation import TF32Emulation  # noqa: E402

MAX_REL_ERR, MAX_CIL_DROP = 1e-2, 0.5  # the rule of docs/speed.md
VARIANTS = {"fp32": ["-O", "0", "--fisher_precision", "fp32"], "tf32": ["-O", "1", "--fisher_precision", "tf32"],
            "O2": ["-O", "2", "--fisher_precision", "fp32"], "bf16": ["-O", "0", "--fisher_precision", "bf16"],
            "bf16x3": ["-O", "0", "--fisher_precision", "bf16x3"],
            "x3tf32": ["-O", "1", "--fisher_precision", "bf16x3"]}
# the Fisher precision of each variant that changes the Fisher (its paired passes)
FISHER_OF = {"tf32": "tf32", "bf16": "bf16", "bf16x3": "bf16x3", "x3tf32": "bf16x3"}
CHANGES_FISHER = tuple(FISHER_OF)
# the estimators of the paired Fisher passes (--fisher_mc_classes): every seen class (the published line's), top-1
ESTIMATORS: dict[str, Optional[int]] = {"exact": None, "top1": 1}
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


# a diagnostic paired pass, not ruled on (a CPU only): TF32 emulated except in grouped (depthwise) convolutions
TF32_DENSE = "tf32_dense"


def in_precision(precision: str) -> ContextManager:
    """Around a Fisher pass in ``precision``: TF32 emulated where fp32 matmuls cannot run in TF32 (a CPU)."""
    if precision == TF32_DENSE:
        return TF32Emulation(grouped=False)
    return TF32Emulation() if precision == "tf32" and not accelerator.tf32_available() else contextlib.nullcontext()


def fisher_error(approx: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> float:
    """||approx - exact|| / ||exact|| (Frobenius, all layers together, in fp64)."""
    if sorted(approx) != sorted(exact):
        raise RuntimeError(f"the Fisher passes cover different layers: {sorted(approx)} and {sorted(exact)}")
    diff = sum(float((approx[k].double() - exact[k].double()).pow(2).sum()) for k in exact)
    norm = sum(float(exact[k].double().pow(2).sum()) for k in exact)
    return (diff / norm) ** 0.5


class PairedFisher:
    """While active, each ``TaskStatistics.compute_fisher`` of the run is followed by the same task's Fisher pass on
    the same network (at theta0), pre-tuned head and images, for each estimator of ``ESTIMATORS`` in fp32 and in each
    of ``precisions``. ``tasks`` gets one row per task: the errors against the fp32 pass of the same estimator and
    ``run_check``, the error of the fp32 pass of the run's own estimator against the run's F_t (about 1e-7 when the
    images and weights are the run's). The run itself is not changed: the images come from a loader with the
    stream of the run's own Fisher loader that does not count as one, and the passes draw no random numbers."""

    def __init__(self, precisions: list[str]) -> None:
        from models.second_order_utils.task_stats import TaskStatistics
        self.cls, self.precisions, self.tasks = TaskStatistics, list(precisions), []  # type: list[dict[str, Any]]

    def __enter__(self) -> "PairedFisher":
        original = self.original = self.cls.compute_fisher
        paired = self

        def compute_fisher(stats: Any, dataset: Any) -> None:
            loader = dataset.make_loader(dataset.train_dataset(stats.task), shuffle=True,
                                         batch_size=stats.stats_batch_size(dataset), counted=False)
            images = [x.to(stats.device) for x, _, _ in loader]
            original(stats, dataset)
            paired.tasks.append(paired.measure(stats, images))
        self.cls.compute_fisher = compute_fisher
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cls.compute_fisher = self.original

    def measure(self, stats: Any, images: list[torch.Tensor]) -> dict[str, Any]:
        s, end = stats.settings, stats.end

        def logits(x: torch.Tensor) -> torch.Tensor:
            return stats.pretuned_head.seen_logits(stats.net.features(x))[:, :end]
        row: dict[str, Any] = {"task": stats.task + 1, "classes": end, "images": sum(len(x) for x in images),
                               "errors": {p: {} for p in self.precisions}, "seconds": {}}
        for estimator, mc_classes in ESTIMATORS.items():
            reference: dict[str, torch.Tensor] = {}
            for precision in ["fp32", *self.precisions]:
                start = time.perf_counter()
                with in_precision(precision):
                    fisher, _ = network_fisher(logits, stats.pool.layers, iter(images), mc_classes,
                                               precision="tf32" if precision == TF32_DENSE else precision,
                                               mc_group=stats.args.batch_size,
                                               class_batch=s.fisher_class_batch)
                row["seconds"][f"{estimator}_{precision}"] = time.perf_counter() - start
                if precision != "fp32":
                    row["errors"][precision][estimator] = fisher_error(fisher, reference)
                    continue
                reference = fisher
                if mc_classes == s.fisher_mc_classes and not s.fisher_sampled_labels:
                    row["run_check"] = fisher_error(fisher, stats.fisher_current)
        return row


def subsample_npz(src: str, dst: str, train_per_class: Optional[int], test_per_class: Optional[int]) -> str:
    """A copy of ``src`` at ``dst`` with the first N images of each class of each split (None: all); arrays as long
    as a split's labels (``x_train``, ``coarse_train`` ...) are cut alike, the others copied."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        if per_class is None:
            continue
        y = arrays[f"y_{split}"]
        keep = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in np.unique(y)]))
        for k, v in arrays.items():
            if k.endswith(f"_{split}") and v.ndim and len(v) == len(y):
                arrays[k] = v[keep]
    np.savez(dst, **arrays)
    return dst


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


def one_run(data: str, variant: str, seed: int, workdir: str, img_size: int, extra: list[str],
            paired: tuple[str, ...] = ()) -> dict[str, Any]:
    """One run of ``variant``; ``paired``: the precisions of :class:`PairedFisher` (fp32 runs only)."""
    tag = f"{os.path.basename(data).split('.')[0]}_{variant}_s{seed}"
    base = override(["--model", "second_order", *real_data_args(data, img_size), *ITA_ARGS, "--n_epochs", "1",
                     "--non_verbose", "--plots", "0", "--base_path", os.path.join(workdir, "data")], SMALL)
    argv = override(base, extra)
    argv = override(argv, [*VARIANTS[variant], "--seed", str(seed), "--savecheck", "task",
                           "--checkpoint_path", os.path.join(workdir, "ckpt"), "--ckpt_name", tag,
                           "--results_file", os.path.join(workdir, f"{tag}.json")])
    emulate = variant in ("tf32", "x3tf32") and not accelerator.tf32_available()
    emulation = TF32Emulation(follow_switches=variant == "x3tf32") if emulate else contextlib.nullcontext()
    start = time.perf_counter()
    with FisherTimer() as timer, (PairedFisher(list(paired)) if paired else contextlib.nullcontext()) as pairs, \
            emulation:
        res = run(argv)
    fishers = task_fishers(os.path.join(workdir, "ckpt", tag))
    return {"variant": variant, "seed": seed, "final_class_il": float(res["final_class_il"]),
            "tasks_done": int(res["tasks_done"]), "tf32_emulated": emulate, "paired": pairs.tasks if paired else [],
            "fisher_seconds": timer.seconds, "run_seconds": time.perf_counter() - start, "fishers": fishers}


def rel_err(approx: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """The largest per-task relative Frobenius error."""
    if not exact or len(approx) != len(exact):
        raise RuntimeError(f"{len(approx)} and {len(exact)} task Fishers: the runs did not save the same tasks")
    return max(float((a - e).norm() / e.norm()) for a, e in zip(approx, exact))


def paired_errors(runs: list[dict[str, Any]], precision: str) -> dict[str, float]:
    """Per estimator, the largest paired error of ``precision`` over the tasks of ``runs`` (fp32 runs)."""
    rows = [row for r in runs for row in r["paired"] if precision in row["errors"]]
    if not rows:
        raise RuntimeError(f"no paired Fisher pass of {precision}: the fp32 runs measured none")
    return {e: max(row["errors"][precision][e] for row in rows) for e in ESTIMATORS}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per variant: per dataset the class-IL of each seed, the mean paired change against fp32, the largest paired
    Fisher error per estimator (the variants that change the Fisher) and the largest run-against-run Fisher error;
    the seconds averaged over all runs."""
    out: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        per_data: dict[str, Any] = {}
        for data in dict.fromkeys(r["data"] for r in runs):
            mine = sorted((r for r in runs if r["variant"] == variant and r["data"] == data), key=lambda r: r["seed"])
            refs = [r for r in runs if r["variant"] == "fp32" and r["data"] == data]
            base = {r["seed"]: r["final_class_il"] for r in refs}
            changes = [r["final_class_il"] - base[r["seed"]] for r in mine]
            paired = (paired_errors(refs, FISHER_OF[variant]) if variant in FISHER_OF
                      else {e: 0.0 for e in ESTIMATORS})
            per_data[data] = {"seeds": [r["seed"] for r in mine], "class_il": [r["final_class_il"] for r in mine],
                              "class_il_change": changes, "class_il_change_mean": statistics.mean(changes),
                              "class_il_change_sem": (statistics.stdev(changes) / len(changes) ** 0.5
                                                      if len(changes) > 1 else 0.0),
                              "paired_fisher_err": paired,
                              "run_fisher_err": max(r["run_fisher_err"] for r in mine)}
        mine = [r for r in runs if r["variant"] == variant]
        out[variant] = {"datasets": per_data,
                        "fisher_rel_err": max(max(d["paired_fisher_err"].values()) for d in per_data.values()),
                        "run_fisher_err": max(d["run_fisher_err"] for d in per_data.values()),
                        "worst_class_il_change": min(d["class_il_change_mean"] for d in per_data.values()),
                        "fisher_seconds_mean": statistics.mean(r["fisher_seconds"] for r in mine),
                        "run_seconds_mean": statistics.mean(r["run_seconds"] for r in mine)}
    return out


def passes(variant: str, s: dict[str, Any]) -> bool:
    """The rule of docs/speed.md (criterion (a) as amended: ``fisher_rel_err`` is the largest paired error) for one
    variant's summary."""
    fisher_ok = variant not in CHANGES_FISHER or s["fisher_rel_err"] <= MAX_REL_ERR
    return fisher_ok and s["worst_class_il_change"] >= -MAX_CIL_DROP


def print_paired(r: dict[str, Any]) -> None:
    for row in r["paired"]:
        errs = ", ".join(f"{p} {e} {v:.2e}" for p, d in row["errors"].items() for e, v in d.items())
        check = f", run check {row['run_check']:.1e}" if "run_check" in row else ""
        print(f"    task {row['task']} ({row['classes']} classes, {row['images']} images): {errs}{check}", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["../shared/data/cifar100_mini.npz",
                                                      "../shared/data/cifar10_mini.npz"], help="npz datasets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["fp32", "tf32", "O2"], choices=list(VARIANTS))
    parser.add_argument("--img_size", type=int, default=32)
    parser.add_argument("--train_per_class", type=int, default=None, help="keep the first N training images a class")
    parser.add_argument("--test_per_class", type=int, default=None, help="keep the first N test images a class")
    parser.add_argument("--tf32_dense", action="store_true",
                        help="also a paired TF32 pass that leaves grouped (depthwise) convolutions in fp32, beside "
                             "the full TF32 one (a CPU diagnostic, not ruled on)")
    parser.add_argument("--out", default=None, help="also write the figures as JSON to this file")
    opts, extra = parser.parse_known_args(argv)
    variants = ["fp32"] + [v for v in opts.variants if v != "fp32"]  # the reference always runs first
    paired = tuple(dict.fromkeys(FISHER_OF[v] for v in variants if v in FISHER_OF))
    if opts.tf32_dense:  # beside the full TF32 pass, whether or not the tf32 runs are asked for
        paired = (*dict.fromkeys([*paired, "tf32"]), TF32_DENSE)
    if opts.tf32_dense and accelerator.tf32_available():
        parser.error("--tf32_dense emulates TF32: a CPU diagnostic (a GPU runs every convolution its own way)")
    workdir = tempfile.mkdtemp(prefix="fisher_precision_")
    device = str(accelerator.default_device())
    runs: list[dict[str, Any]] = []
    try:
        for data in opts.data:
            if opts.train_per_class or opts.test_per_class:
                os.makedirs(os.path.join(workdir, "subsets"), exist_ok=True)
                data = subsample_npz(data, os.path.join(workdir, "subsets", os.path.basename(data)),
                                     opts.train_per_class, opts.test_per_class)
            for seed in opts.seeds:  # seed-major: an interrupted benchmark still has complete seeds
                reference: list[torch.Tensor] = []
                for variant in variants:
                    r = one_run(data, variant, seed, workdir, opts.img_size, extra,
                                paired if variant == "fp32" else ())
                    fishers = r.pop("fishers")
                    reference = reference or fishers
                    r["run_fisher_err"], r["data"] = rel_err(fishers, reference), os.path.basename(data)
                    runs.append(r)
                    print(f"{r['data']} seed {seed} {variant}: class-IL {r['final_class_il']:.2f} %, run-vs-run "
                          f"Fisher err {r['run_fisher_err']:.2e}, Fisher passes {r['fisher_seconds']:.1f} s, run "
                          f"{r['run_seconds']:.0f} s", flush=True)
                    print_paired(r)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = summarise(runs)
    verdicts = {v: passes(v, s) for v, s in summary.items()}
    print(f"\n({device}{', TF32 emulated' if not accelerator.tf32_available() else ''}; seeds "
          f"{' '.join(map(str, opts.seeds))}, {runs[0]['tasks_done']} tasks)")
    print(f"{'variant':8s} {'dataset':18s} {'paired err exact / top-1':>25s} {'run-vs-run':>10s} "
          f"{'class-IL per seed':>24s} {'mean change':>16s}")
    for v, s in summary.items():
        for data, d in s["datasets"].items():
            p = d["paired_fisher_err"]
            print(f"{v:8s} {data:18s} {p['exact']:12.2e} / {p['top1']:.2e} {d['run_fisher_err']:10.2e} "
                  f"{' '.join(f'{c:6.2f}' for c in d['class_il']):>24s} "
                  f"{d['class_il_change_mean']:+7.2f} +- {d['class_il_change_sem']:4.2f}")
    print(f"rule (paired Fisher err <= {MAX_REL_ERR:g} for {'/'.join(CHANGES_FISHER)}, mean class-IL change >= "
          f"-{MAX_CIL_DROP} on every dataset): " + ", ".join(f"{v} {'passes' if ok else 'fails'}"
                                                              for v, ok in verdicts.items() if v != "fp32"))
    if opts.out:
        write_json(opts.out, {"device": device, "seeds": opts.seeds, "summary": summary, "passes": verdicts,
                              "runs": runs, "max_rel_err": MAX_REL_ERR, "max_class_il_drop": MAX_CIL_DROP,
                              "train_per_class": opts.train_per_class, "test_per_class": opts.test_per_class,
                              "extra_flags": extra})
    return 0


if __name__ == "__main__":
    sys.exit(main())
