"""GPU check of the flagship: the published ITA and IEL command lines on CUDA, offline, in minutes.

    python -m benchmarks.gpu_check                      # CUDA: ViT-B/16, fp32 and bf16 (+ torchrun x2 with 2 GPUs)
    python -m benchmarks.gpu_check --device cpu         # the same checks on the CPU with a small ViT (the test suite)

Nothing is downloaded. In a temporary folder it writes

* CIFAR-100 in the official on-disk layout (``CIFAR100/cifar-100-python/{train,test,meta}``, python pickles) from
  ``../shared/data/cifar100_mini.npz`` (1,117 training and 916 test images of the 100 classes), and
* random ViT-B/16 weights into a Hugging Face cache (``HF_HOME``) under the timm name that ``--pretrain_type in21k``
  resolves (``timm/vit_base_patch16_224.augreg_in21k``), so the real loading path runs;

then runs, in debug mode (a few batches per epoch and per evaluation; ``--vbs_tail flush`` so that the 16
micro-batch virtual batch still makes optimizer and penalty steps), the published lines (algorithm.md §7)

    --model ita --dataset seq-cifar100-224 --model_config best
    --model iel --dataset seq-cifar100-224 --model_config best      (= the paper code's IEL reproduction line)

with ``--precision fp32`` and ``bf16``, and under ``torchrun --nproc_per_node 2 ... --distributed ddp`` when two
GPUs exist. Each run must finish with finite accuracies and with every tensor of the model (parameters, buffers,
Fisher sums, optimizer state, heads; the GMMs are host-side by design) on the run's device. The JSON (``--out``)
holds per-phase seconds (features, GMMs, pre-tuning, Fisher, training, evaluation), the peak GPU memory and the
accuracies of every run. Exit code 0 when every check passes, 1 otherwise.

``--full`` runs instead the ITA line unchanged but for the data size: not in debug mode (every image, the Fisher's
micro-batch structure and all seen classes), with the device's defaults (on CUDA ``-O 1`` and the bf16x3 Fisher),
stopped after task 2 and resumed from its checkpoint to the
last task, under ``torchrun`` with 2 processes when 2 GPUs exist; flags the script does not know are passed to both
halves. Its JSON adds per-phase seconds of both halves, the peak memory, the Fisher's achieved FLOP/s (the FLOPs of
``benchmarks.phases.vit_flops`` over the images and seen classes of every task, divided by the Fisher's seconds)
and the Fisher's per-sample pass timed on the device (``benchmarks.square_sum``: the square-and-sum forms, then the
GEMM + each form beside the fused Triton kernel, the fastest and whether the Fisher uses it; the fused kernel's error
against float64 and TFLOP/s at fp32, tf32x3 and bf16x3) and the bf16x3 GEMMs beside fp32 and TF32
(``benchmarks.split_gemm``: seconds, error against float64, speed-up). About 5 minutes
on one H200 (ViT-B/16, 1,117 training images, 20 epochs; estimated from FLOPs, not run); ``--full --device cpu``
runs 3 tasks of 1 epoch with the small ViT (the test suite).

``--device cpu`` replaces ViT-B/16 by ``vit_tiny_patch16_224`` with one block, 32-pixel patches and 96 dimensions
through the test-only variable ``CL_TEST_VIT_B16_ARCH`` (backbone/vit.py), stops after 2 tasks of 1 epoch and runs
ITA fp32 and IEL bf16 only (about 45 s of CPU time in all).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # also when torchrun starts this file by its path
    sys.path.insert(0, ROOT)
DEFAULT_DATA = next((p for p in (os.path.join(up, "shared", "data", "cifar100_mini.npz") for up in (
    os.path.dirname(ROOT), os.path.dirname(os.path.dirname(ROOT)))) if os.path.isfile(p)),
    os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar100_mini.npz"))
LINES = {"ita": ["--model", "ita", "--dataset", "seq-cifar100-224", "--model_config", "best"],
         "iel": ["--model", "iel", "--dataset", "seq-cifar100-224", "--model_config", "best"]}
HUB_NAME = "timm/vit_base_patch16_224.augreg_in21k"
CPU_ARCH = "vit_tiny_patch16_224:depth=1,patch_size=32,embed_dim=96"
PHASES = {"stats.extract_features": "features", "stats.fit_gmms": "gmms", "stats.pretune": "pretuning",
          "stats.compute_fisher": "fisher", "meta_observe": "training", "end_task": "end_task"}


def write_cifar100(npz_path: str, base_path: str) -> str:
    """``npz_path`` as ``<base_path>/CIFAR100/cifar-100-python/{train,test,meta}`` (the official pickles)."""
    from datasets.utils.cifar import CIFAR100_CLASSES
    folder = os.path.join(base_path, "CIFAR100", "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    with np.load(npz_path) as data:
        for split in ("train", "test"):
            x, y = data[f"x_{split}"], data[f"y_{split}"]
            coarse = data[f"coarse_{split}"] if f"coarse_{split}" in data else np.zeros_like(y)
            entry = {"filenames": [f"{split}_{i}.png" for i in range(len(y))], "batch_label": f"{split} mini",
                     "fine_labels": [int(v) for v in y], "coarse_labels": [int(v) for v in coarse],
                     "data": np.ascontiguousarray(x.reshape(len(y), -1), dtype=np.uint8)}  # (N, 3*32*32) CHW rows
            with open(os.path.join(folder, split), "wb") as fh:
                pickle.dump(entry, fh, protocol=4)
    with open(os.path.join(folder, "meta"), "wb") as fh:
        pickle.dump({"fine_label_names": list(CIFAR100_CLASSES), "coarse_label_names": []}, fh, protocol=4)
    return folder


def write_hub_weights(hf_home: str, arch_spec: Optional[str]) -> str:
    """Random weights of the ``vit`` backbone's architecture as ``HUB_NAME`` in a Hugging Face cache."""
    import timm
    import torch
    arch, _, rest = (arch_spec or "vit_base_patch16_224").partition(":")
    kwargs = {k: int(v) for k, v in (item.split("=") for item in rest.split(",") if item)}
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    repo = os.path.join(hf_home, "hub", "models--" + HUB_NAME.replace("/", "--").replace(
        "vit_base_patch16_224", arch))
    commit = "0" * 40
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "snapshots", commit), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as fh:
        fh.write(commit)
    path = os.path.join(repo, "snapshots", commit, "pytorch_model.bin")
    torch.save(model.state_dict(), path)
    return path


class PhaseTimer:
    """Wraps a model's phase methods on the instance and sums their wall-clock seconds (GPU synchronised)."""

    def __init__(self, model: Any, device: Any):
        from utils import accelerator
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = lambda: accelerator.synchronize(device)
        for path, phase in PHASES.items():  # "owner.method": a method of model.owner (e.g. its statistics)
            *owners, method = path.split(".")
            owner = model
            for name in owners:
                owner = getattr(owner, name, None)
            if owner is not None and hasattr(owner, method):
                setattr(owner, method, self._timed(getattr(owner, method), phase))

    def _timed(self, fn: Callable, phase: str) -> Callable:
        def wrapped(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[phase] += time.perf_counter() - start
        return wrapped


def run_line(argv: list[str]) -> dict[str, Any]:
    """One run in this process: build, train with per-task device checks, return accuracies, phases, memory."""
    import torch

    from app.config import parse_args
    from app.experiment import build_experiment
    from utils import accelerator, distributed
    from utils.device_audit import misplaced_tensors
    from utils.training import train

    args = parse_args(argv)
    device = distributed.init_from_env(args.dist_timeout, args.device) if args.distributed == "ddp" else None
    experiment = build_experiment(args, device)
    model, device = experiment.model, experiment.device
    accelerator.reset_peak_memory(device)
    timer = PhaseTimer(model, device)
    misplaced: list[str] = []

    def after_task(record: Any) -> None:
        misplaced.extend(f"task {record.tasks_done}: {m}" for m in misplaced_tensors(model, device))

    started = time.perf_counter()
    record = train(model, experiment.dataset, args, on_task_end=after_task)
    total = time.perf_counter() - started
    evaluation = sum(t["eval_seconds"] for t in record.task_timings)
    accs = [a for row in record.accuracy_matrix_class_il + record.accuracy_matrix_task_il for a in row]
    out = {"argv": argv, "device": str(device), "rank": distributed.rank(), "tasks_done": record.tasks_done,
           "final_class_il": accs and record.accuracy_matrix_class_il[-1], "seconds_total": round(total, 2),
           "seconds": {**{k: round(v, 2) for k, v in timer.seconds.items()}, "evaluation": round(evaluation, 2)},
           "peak_memory_mib": (lambda mib: None if mib is None else round(mib, 1))(accelerator.peak_memory_mib(device)),
           "misplaced_tensors": misplaced[:20], "finite": bool(accs) and all(math.isfinite(a) for a in accs),
           "penalties": {k: float(v) for k, v in getattr(model, "last_penalties", {}).items()}}
    out["penalties_finite"] = all(math.isfinite(v) for v in out["penalties"].values())
    out["ok"] = out["finite"] and out["penalties_finite"] and not misplaced and record.tasks_done > 0
    if args.distributed == "ddp":
        distributed.shutdown()
    return out


def plan(device: str, gpus: int) -> list[tuple[str, str, int]]:
    """(line, precision, processes) of every run."""
    if device == "cpu":
        return [("ita", "fp32", 1), ("iel", "bf16", 1)]
    runs = [(line, precision, 1) for line in ("ita", "iel") for precision in ("fp32", "bf16")]
    if gpus >= 2:
        runs += [("ita", "bf16", 2), ("iel", "bf16", 2)]
    return runs


FULL_STOP = 2  # --full: the first half stops after this task, the second resumes from its checkpoint
CPU_FULL_TASKS = 3
DIMS = {"cuda": {"dim": 768, "depth": 12, "tokens": 197, "patches": 196},
        "cpu": {"dim": 96, "depth": 1, "tokens": 50, "patches": 49}}  # CPU_ARCH at 224 px


def fisher_flops(data: str, tasks: int, classes_per_task: int, dims: dict[str, int]) -> float:
    """Matmul FLOPs of the exact Fisher passes of the first ``tasks`` tasks (every training image of a task, one
    forward and one class backward per seen class), from ``benchmarks.phases.vit_flops``."""
    from benchmarks.phases import vit_flops
    v = vit_flops(dims["dim"], dims["depth"], dims["tokens"], dims["patches"])
    with np.load(data) as npz:
        y = npz["y_train"]
    total = 0.0
    for t in range(tasks):
        n = int(((y >= t * classes_per_task) & (y < (t + 1) * classes_per_task)).sum())
        total += n * (v["forward"] + (t + 1) * classes_per_task * v["fisher_class"])
    return total


SQUARE_SUM_SHAPES = {"cuda": [(16, 2304, 768), (16, 3072, 768)], "cpu": [(8, 288, 96), (8, 384, 96)]}  # B, O, I


def square_sum_check(device: str) -> dict[str, Any]:
    """The Fisher's per-sample pass timed on ``device`` at the per-sample product shapes of the run's ViT: the
    square-and-sum forms alone, then the whole pass (fp32 GEMM + each form, and the fused Triton kernel where it
    runs) with the fastest and whether it is the form the Fisher uses; where the fused kernel runs, its error against
    float64 and its TFLOP/s at fp32, tf32x3 and bf16x3."""
    from benchmarks.square_sum import fused_precisions, measure
    import torch

    from models.second_order_utils.fisher import square_sum_form
    from utils.accelerator import fused_kernels_available
    shapes = SQUARE_SUM_SHAPES["cpu" if device == "cpu" else "cuda"]
    tokens = DIMS["cpu" if device == "cpu" else "cuda"]["tokens"]
    dev = torch.device(device)
    rows = [measure(shape, dev, 5, tokens) for shape in shapes]
    fastest = [r["with_product"]["fastest"] for r in rows]
    chosen = square_sum_form(dev)
    fused: Any = rows[0]["with_product"]["fused"]
    if fused_kernels_available(dev):
        fused = {",".join(map(str, shape)): fused_precisions(shape, tokens, dev, 5) for shape in shapes}
    return {"rows": rows, "chosen": chosen, "fastest": fastest, "chosen_is_fastest": all(f == chosen for f in fastest),
            "fused": fused}


def square_sum_lines(sq: dict[str, Any]) -> list[str]:
    """:func:`square_sum_check`'s result, printable."""
    lines = [f"per-sample pass (GEMM + square-sum forms, fused kernel) fastest: {sq['fastest']} (chosen "
             f"{sq['chosen']})"]
    for r in sq["rows"]:
        lines.append(f"  {','.join(map(str, r['shape']))}: " + ", ".join(
            f"{k} {v * 1e3:.2f} ms" for k, v in r["with_product"]["seconds"].items()))
    if not isinstance(sq["fused"], dict):
        return lines + [f"  fused kernel {sq['fused']}"]
    for shape, by_precision in sq["fused"].items():
        lines.append(f"  fused {shape}: " + ", ".join(f"{p} {v['tflop_per_s']:.2f} TFLOP/s (rel. err "
                                                      f"{v['max_rel_err']:.1e})" for p, v in by_precision.items()))
    return lines


def launch(run_args: list[str], procs: int, out: str, env: dict[str, str]) -> tuple[dict[str, Any], Any]:
    """One run of the script's worker (under torchrun with ``procs`` > 1); its JSON and the finished process."""
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                    "--standalone", "--nproc_per_node", str(procs)]
    if procs > 1:
        run_args = [*run_args, "--distributed", "ddp"]
    cmd = [*launcher, "-m" if procs == 1 else os.path.join(ROOT, "benchmarks", "gpu_check.py"),
           *(["benchmarks.gpu_check"] if procs == 1 else []), "--worker", out, *run_args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if not os.path.isfile(out):
        return {"ok": False}, proc
    with open(out) as fh:
        return json.load(fh), proc


def full_check(opts: argparse.Namespace, extra: list[str], tmp: str, env: dict[str, str], gpus: int) -> dict[str, Any]:
    """--full: the ITA line with the device's defaults, stopped after task FULL_STOP and resumed to the end; figures
    of both halves."""
    procs = 2 if gpus >= 2 else 1
    ckpt = os.path.join(tmp, "ckpt")
    base = [*LINES["ita"], "--seed", "0", "--non_verbose", "--base_path", os.path.join(tmp, "data"),
            "--device", opts.device, "--num_workers", "2" if opts.device != "cpu" else "0", "--savecheck", "task",
            "--checkpoint_path", ckpt, "--ckpt_name", "full"]
    if opts.device == "cpu":
        base += ["--n_epochs", str(opts.n_epochs or 1)]
    elif opts.n_epochs:
        base += ["--n_epochs", str(opts.n_epochs)]
    halves = [[*base, "--stop_after", str(FULL_STOP), *extra],
              [*base, "--loadcheck", os.path.join(ckpt, "full", f"task_{FULL_STOP}.pt"), *extra,
               *(["--stop_after", str(CPU_FULL_TASKS)] if opts.device == "cpu" else [])]]
    entries = []
    for i, run_args in enumerate(halves):
        t0 = time.perf_counter()
        entry, proc = launch(run_args, procs, os.path.join(tmp, f"full{i}.json"), env)
        entry.update(exit_code=proc.returncode, wall_seconds=round(time.perf_counter() - t0, 2), processes=procs)
        if proc.returncode != 0 or not entry.get("ok"):
            entry["ok"] = False
            entry["stderr_tail"] = proc.stderr[-3000:]
        entries.append(entry)
        print(f"full, half {i + 1}: {'ok' if entry['ok'] else 'FAILED'} ({entry['wall_seconds']} s, tasks "
              f"{entry.get('tasks_done')}, peak {entry.get('peak_memory_mib')} MiB)", flush=True)
    seconds: dict[str, float] = defaultdict(float)
    for e in entries:
        for phase, v in e.get("seconds", {}).items():
            seconds[phase] += v
    tasks = entries[-1].get("tasks_done") or 0
    flops = fisher_flops(opts.data, tasks, 10, DIMS["cpu" if opts.device == "cpu" else "cuda"]) if tasks else 0.0
    peaks = [e.get("peak_memory_mib") for e in entries if e.get("peak_memory_mib") is not None]
    return {"runs": entries, "ok": all(e["ok"] for e in entries) and tasks > FULL_STOP, "tasks_done": tasks,
            "resumed_after_task": FULL_STOP, "seconds": dict(seconds), "peak_memory_mib": max(peaks) if peaks else None,
            "fisher_flops": flops, "fisher_flop_per_s": flops / seconds["fisher"] if seconds.get("fisher") else None,
            "final_class_il": entries[-1].get("final_class_il"), "square_sum": square_sum_check(opts.device),
            "split_gemm": split_gemm_check(opts.device)}


def split_gemm_check(device: str) -> dict[str, Any]:
    """``benchmarks.split_gemm`` on the device (a quarter of the shapes on a CPU)."""
    import torch

    from benchmarks.split_gemm import measure
    return measure(torch.device(device), scale=4 if device == "cpu" else 1, repeats=3 if device == "cpu" else 10)


def split_gemm_lines(res: dict[str, Any]) -> list[str]:
    """:func:`split_gemm_check`'s result, printable."""
    return [f"{name} {form}: {row['seconds'] * 1e3:.2f} ms, rel. err {row['rel_err']:.1e}, "
            f"{row['tflops']:.1f} TFLOP/s, x{row['speedup_vs_fp32']:.2f} vs fp32"
            for name, r in res.items() for form, row in r["forms"].items()]


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:  # inside torchrun (or a child process): one run, its arguments passed verbatim
        result = run_line(argv[2:])  # (not through the parser below: it would take --device and --n_epochs)
        if result["rank"] == 0:
            with open(argv[1], "w") as fh:
                json.dump(result, fh)
        return 0 if result["ok"] else 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (small ViT, 2 tasks)")
    parser.add_argument("--data", default=DEFAULT_DATA, help="cifar100_mini.npz")
    parser.add_argument("--out", default="gpu_check.json", help="JSON report")
    parser.add_argument("--n_epochs", type=int, default=None,
                        help="epochs per task (default: the published 20 on CUDA, 1 on the CPU)")
    parser.add_argument("--full", action="store_true", help="the ITA line at -O 2 on all the data, resumed after "
                                                            "task 2, with Fisher FLOP/s and the square-sum re-check")
    opts, extra = parser.parse_known_args(argv)
    if extra and not opts.full:
        parser.error(f"unrecognized arguments: {' '.join(extra)} (extra run flags go with --full)")
    if not os.path.isfile(opts.data):
        print(f"error: {opts.data} not found; pass --data PATH/cifar100_mini.npz", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="gpu-check-")
    env = dict(os.environ, HF_HOME=os.path.join(tmp, "hf"), HF_HUB_OFFLINE="1", CL_NO_DOWNLOAD="1",
               TORCH_HOME=os.path.join(tmp, "torch"))
    arch = CPU_ARCH if opts.device == "cpu" else None
    if arch:
        env["CL_TEST_VIT_B16_ARCH"] = arch
    else:
        env.pop("CL_TEST_VIT_B16_ARCH", None)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "device": opts.device,
                              "runs": []}
    try:
        started = time.perf_counter()
        write_cifar100(opts.data, os.path.join(tmp, "data"))
        write_hub_weights(env["HF_HOME"], arch)
        report["setup_seconds"] = round(time.perf_counter() - started, 2)
        from utils import accelerator
        gpus = accelerator.device_count(opts.device) if opts.device != "cpu" else 0
        if opts.device != "cpu" and gpus == 0:
            print("error: no CUDA device; use --device cpu", file=sys.stderr)
            return 2
        report["gpu"] = accelerator.device_name(f"{opts.device}:0") if gpus else None
        epochs = opts.n_epochs or (1 if opts.device == "cpu" else None)
        if opts.full:
            report["full"] = full_check(opts, extra, tmp, env, gpus)
            full = report["full"]
            print(f"Fisher {full['fisher_flops'] / 1e12:.1f} TFLOP at "
                  f"{(full['fisher_flop_per_s'] or 0) / 1e12:.2f} TFLOP/s", flush=True)
            print("\n".join(square_sum_lines(full["square_sum"])), flush=True)
            print("\n".join(split_gemm_lines(full["split_gemm"])), flush=True)
        for i, (line, precision, procs) in enumerate([] if opts.full else plan(opts.device, gpus)):
            run_args = [*LINES[line], "--debug_mode", "1", "--vbs_tail", "flush", "--precision", precision,
                        "--seed", "0", "--non_verbose", "--base_path", os.path.join(tmp, "data"),
                        "--device", opts.device, "--num_workers", "2" if opts.device != "cpu" else "0"]
            if epochs:
                run_args += ["--n_epochs", str(epochs)]
            if opts.device == "cpu":
                run_args += ["--stop_after", "2"]
            t0 = time.perf_counter()
            entry, proc = launch(run_args, procs, os.path.join(tmp, f"run{i}.json"), env)
            entry.update(line=line, precision=precision, processes=procs, exit_code=proc.returncode,
                         wall_seconds=round(time.perf_counter() - t0, 2))
            if proc.returncode != 0 or not entry["ok"]:
                entry["ok"] = False
                entry["stderr_tail"] = proc.stderr[-3000:]
            report["runs"].append(entry)
            print(f"{line} {precision} x{procs}: {'ok' if entry['ok'] else 'FAILED'} "
                  f"({entry['wall_seconds']} s, class-IL {entry.get('final_class_il')}, "
                  f"peak {entry.get('peak_memory_mib')} MiB)", flush=True)
        report["total_seconds"] = round(time.perf_counter() - started, 2)
        report["ok"] = all(r["ok"] for r in report["runs"]) and report.get("full", {}).get("ok", True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp_out = opts.out + ".tmp"
    with open(tmp_out, "w") as fh:
        json.dump(report, fh, indent=2)
    os.replace(tmp_out, opts.out)
    print(f"{'all checks passed' if report['ok'] else 'CHECK FAILED'}; report: {opts.out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
