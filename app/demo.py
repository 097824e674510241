"""``make demo``: ITA against plain fine-tuning on offline real data, on a CPU.

Runs ``sgd`` (plain fine-tuning, the lower bound) and ``second_order`` ITA (a LoRA module per task on a
frozen ImageNet EfficientNet-Lite0, penalised with the Fisher at theta0, composed by averaging) on the
CIFAR-100 mini subset as 10 tasks x 10 classes at 96 px, prints both final class-IL accuracies beside the
paper's (ViT-B/16 on the full CIFAR-100, a GPU run), and writes one plot and one JSON of the two runs.
The settings below (shared with tests/test_second_order_real.py) are cheaper than the published ones: one
epoch, one probe epoch, the top-1 Fisher (``--fisher_mc_classes 1``); the trained heads are re-aligned at each
task end (``--use_ca 1``); docs/results.md has their validation and timings.

The two runs go side by side (``--jobs``), each a ``main.py`` process (which sets its malloc,
``utils/malloc_policy.py``) with ``--threads`` threads (half the cores each) and ``--num_workers 0``; their lines
are printed as they come, marked with their method, and the table adds each run's CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from app.config import ROOT
from benchmarks.paper import TABLES
from utils.errors import UserError
from utils.io import write_json

IMG_SIZE = 96  # frozen-feature nearest-class-mean: 12% at 32 px, 27% at 64 px, 40% at 96 px, 44% at 128 px
# Feature passes and Fisher kept small (with --n_epochs 1): one probe epoch, the top-1 Fisher. The data has ~11
# images per class: 7 steps of 16 per task and epoch. The alignment's samples and epochs are the published ones
# (256 per class, 10 + 5t epochs), chosen with --use_ca 1 on a validation split (benchmarks.sweep;
# docs/second_order.md); 32 samples cost an eighth but lose 14 points of ITA's class-IL on the MNIST subset of
# tests/test_second_order_real.py (docs/results.md).
CHEAP = ["--batch_size", "16", "--lr", "0.001", "--num_epochs_pretuning", "1",
         "--num_epochs_align_pretuning", "10", "--num_samples_align_pretuning", "256",
         "--batch_size_align_pretuning", "32", "--fisher_mc_classes", "1", "--stats_batch_size", "256"]
# The head regulariser's decoupled step is a plain gradient step: 2 * lambda_2 = 0.6 of the distance to the
# pre-tuned head per step; a small lambda_F keeps 2 lambda_F F/N < 1 (lambda_F = 1 overshoots on large F/N).
HEAD_REG = ["--req_weight_cls", "0.01", "--simple_reg_weight_cls", "0.3"]
# The trained heads re-aligned at every task end (--use_ca 1, an opt-in of this framework, off in the published
# configs): without it the heads of different tasks are not calibrated against each other.
ALIGN = ["--use_ca", "1"]
ITA_ARGS = [*CHEAP, "--alpha_ita", "1", *HEAD_REG, *ALIGN]
IEL_ARGS = [*CHEAP, "--beta_iel", "1", *HEAD_REG, *ALIGN]
SGD_ARGS = ["--batch_size", "16", "--lr", "0.01", "--optim_mom", "0.9"]
TAGS = {"sgd": "sgd", "second_order": "ITA"}  # marks each output line of a run while both run at once
METHODS = (("fine-tuning (sgd)", "sgd", SGD_ARGS, "Finetune"), ("ITA (second_order)", "second_order", ITA_ARGS,
                                                                 "ITA-LoRA"))


def real_data_args(data: str, img_size: int = IMG_SIZE) -> list[str]:
    """Dataset and backbone flags: CIFAR-100 mini as 10 tasks x 10 classes on EfficientNet-Lite0."""
    return ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", "10", "--img_size", str(img_size),
            "--normalization", "half", "--backbone", "efficientnet_lite0", "--seed", "0"]


def common_args(data: str, epochs: int, img_size: int, out: str, model: str) -> list[str]:
    """Flags of both runs. The images are loaded in the run's own process (``--num_workers 0``: the same images and
    augmentations as with workers, by the loaders' design, without forking a worker pair for every pass)."""
    return [*real_data_args(data, img_size), "--non_verbose", "--results_file", os.path.join(out, f"{model}.json"),
            "--n_epochs", str(epochs), "--plots", "0", "--num_workers", "0"]


def paper_accuracy(method: str) -> float:
    """The paper's Table 1 final accuracy (Split CIFAR-100, ViT-B/16 IN-21k) of ``method``."""
    return next(acc for name, _, _, acc in TABLES["1"]["seq-cifar100-224"] if name == method)


def earlier_tasks_accuracy(result: dict[str, Any]) -> float:
    """Mean class-IL accuracy, after the last task, on the tasks before it (what a method still knows of them)."""
    final_row = [a for a in result["accuracy_matrix_class_il"][-1][:-1] if a is not None]
    return sum(final_row) / max(1, len(final_row))


def reading(sgd: dict[str, Any], ita: dict[str, Any]) -> str:
    """One line: what each method still knows of the earlier tasks after the last one, and the final class-IL."""
    return (f"After the last task ITA still gets {earlier_tasks_accuracy(ita):.1f} % of the earlier tasks' test images "
            f"right, fine-tuning {earlier_tasks_accuracy(sgd):.1f} % (it forgets them); final class-IL "
            f"{ita['final_class_il']:.1f} % against {sgd['final_class_il']:.1f} % "
            f"({ita['final_class_il'] - sgd['final_class_il']:+.1f} points).")


def write_outputs(results: dict[str, dict[str, Any]], out: str) -> tuple[str, str]:
    """``demo.json`` (each method's final accuracies, forgetting, curve, wall and CPU seconds) and ``demo.png`` (class-IL
    after each task, both methods); returns their paths."""
    from utils.plots import plot_average_accuracy
    summary = {label: {key: res[key] for key in ("final_class_il", "final_task_il", "forgetting",
                                                   "average_class_il_per_task")}
               | {"seconds": res["timings"]["total_seconds"], "cpu_seconds": res.get("cpu_seconds"),
                  "results_file": res.get("results_file")}
               for label, res in results.items()}
    json_path = os.path.join(out, "demo.json")
    write_json(json_path, summary)
    png = plot_average_accuracy({label: res["average_class_il_per_task"] for label, res in results.items()},
                                os.path.join(out, "demo.png"), title="Class-IL accuracy after each task")
    return png, json_path


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_command(model: str, opts: argparse.Namespace) -> list[str]:
    """The command line of one method's run (``main.py``, the framework's entry point)."""
    extra = next(extra for _, name, extra, _ in METHODS if name == model)
    return [sys.executable, os.path.join(ROOT, "main.py"), "--model", model,
            *common_args(opts.data, opts.epochs, opts.img_size, opts.out, model), *extra,
            "--debug_mode", str(opts.debug_mode)]


def run_env(threads: int) -> dict[str, str]:
    """The environment of a run: ``threads`` threads, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


class Run:
    """One method's run in its own process; its output (stdout and stderr) printed line by line as it comes,
    each line with ``tag`` in front."""

    def __init__(self, label: str, model: str, opts: argparse.Namespace, tag: str, lock: threading.Lock):
        self.label, self.model, self.tag, self.lock = label, model, tag, lock
        self.results_file = os.path.join(opts.out, f"{model}.json")
        self.error = ""  # the last "error: ..." line of its output
        self.cpu_seconds: Optional[float] = None
        self.proc = subprocess.Popen(run_command(model, opts), env=run_env(opts.threads), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._echo, daemon=True)
        self.reader.start()

    def _echo(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                if line.startswith("error: "):
                    self.error = line.strip()[len("error: "):]
                with self.lock:
                    print(f"{self.tag}{line}".rstrip() if self.tag else line.rstrip("\n"), flush=True)

    def finished(self) -> bool:
        """Whether the process has ended; then its exit code is set, and on Linux/macOS ``cpu_seconds`` (user +
        system time of the run and its data-loading workers)."""
        if not hasattr(os, "wait4"):
            if self.proc.poll() is None:
                return False
        else:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == 0:
                return False
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.reader.join()
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait()
        self.reader.join()

    def results(self) -> dict[str, Any]:
        with open(self.results_file) as fh:
            return json.load(fh) | {"results_file": self.results_file}


def cpu_note(seconds: Optional[float]) -> str:
    return "" if seconds is None else f" ({seconds:.0f} s of CPU)"


def run_methods(opts: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each method in its own process with ``opts.threads`` threads, ``opts.jobs`` at a time (the numbers do not
    depend on ``jobs``: each run is the same process either way). Lines are marked with their method when several
    run at once. Returns each method's results; a failed run stops the others and raises a UserError."""
    lock = threading.Lock()
    pending = list(enumerate(METHODS, 1))
    results: dict[str, dict[str, Any]] = {}
    while pending:
        batch, pending = pending[:opts.jobs], pending[opts.jobs:]
        runs: list[Run] = []
        try:
            for i, (label, model, _, _) in batch:
                tag = f"[{TAGS[model]}] " if len(batch) > 1 else ""
                with lock:
                    print(f"\n=== [{i}/{len(METHODS)}] {label}: 10 tasks, accuracy printed after each"
                          f"{f' (lines marked {tag.strip()})' if tag else ''} ===", flush=True)
                runs.append(Run(label, model, opts, tag, lock))
            if len(batch) > 1:
                with lock:
                    print(f"=== side by side: {len(batch)} processes, {opts.threads} thread(s) each ===", flush=True)
            running = list(runs)
            while running:
                for run in [r for r in running if r.finished()]:
                    running.remove(run)
                    if run.proc.returncode:
                        error = UserError(f"the {run.label} run failed (exit code {run.proc.returncode}): "
                                          f"{run.error or 'its output is above'}")
                        error.exit_code = run.proc.returncode if run.proc.returncode > 0 else 1
                        raise error
                    results[run.label] = run.results() | {"cpu_seconds": run.cpu_seconds}
                    with lock:
                        print(f"=== {run.label} done in {results[run.label]['timings']['total_seconds']:.0f} s"
                              f"{cpu_note(run.cpu_seconds)} ===", flush=True)
                time.sleep(0.1)
        finally:
            for run in runs:
                run.stop()
    return {label: results[label] for label, _, _, _ in METHODS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar100_mini.npz",
                        help="npz with x_train/y_train/x_test/y_test and at least 10 classes (CIFAR-100 mini)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per task")
    parser.add_argument("--img_size", type=int, default=IMG_SIZE, help="images are resized to this size")
    parser.add_argument("--out", default="data/results/demo", help="folder of the result JSONs and the plot")
    parser.add_argument("--debug_mode", type=int, default=0, help="1: a few batches per task (a smoke test)")
    parser.add_argument("--jobs", type=int, default=len(METHODS),
                        help="methods run at once, each in its own process (1: one after the other); the numbers "
                             "do not depend on it")
    parser.add_argument("--threads", type=int, default=max(1, available_cores() // len(METHODS)),
                        help="threads of each run (default: the cores shared by the two runs)")
    opts = parser.parse_args(argv)
    if not os.path.isfile(opts.data):
        print(f"error: {opts.data} not found; pass --data PATH to the cifar100_mini.npz file", file=sys.stderr)
        return 2
    if opts.jobs < 1 or opts.threads < 1:
        print(f"error: --jobs and --threads take a positive number, not {min(opts.jobs, opts.threads)}",
              file=sys.stderr)
        return 2
    os.makedirs(opts.out, exist_ok=True)
    started = time.perf_counter()
    try:
        results = run_methods(opts)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    png, json_path = write_outputs(results, opts.out)
    print(f"\nFinal accuracy (%), {os.path.basename(opts.data)}, 10 tasks x 10 classes, EfficientNet-Lite0 "
          f"ImageNet weights, {opts.img_size} px, CPU; the paper: full CIFAR-100, ViT-B/16 IN-21k, GPU:")
    print(f"  {'method':22s} {'class-IL':>9s} {'task-IL':>9s} {'seconds':>8s} {'CPU s':>7s} {'paper (Table 1)':>16s}")
    for label, _, _, paper_name in METHODS:
        res = results[label]
        cpu = "-" if res["cpu_seconds"] is None else f"{res['cpu_seconds']:.0f}"
        print(f"  {label:22s} {res['final_class_il']:9.2f} {res['final_task_il']:9.2f} "
              f"{res['timings']['total_seconds']:8.0f} {cpu:>7s} {paper_accuracy(paper_name):16.2f}")
    sgd, ita = (results[label] for label, _, _, _ in METHODS)
    print(reading(sgd, ita))
    print(f"total {time.perf_counter() - started:.0f} s\nplot: {png}\nresults: {json_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
