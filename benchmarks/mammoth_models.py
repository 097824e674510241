"""How many of Mammoth's model files run here unchanged (debug mode, ``seq-custom`` and ``seq-cifar10``).

    python -m benchmarks.mammoth_models [--models er,der] [--datasets seq-custom,seq-cifar10] [--jobs 2]
        [--timeout 300] [--out FILE.json] [--doc docs/mammoth.md]

Mammoth's source snapshot is extracted into a temporary folder. For each model file of its ``models/`` folder, a
temporary clone of this project (its git-tracked files) receives the file unchanged, together with the method's own
code the file imports from ``models/`` (sibling model files such as ``gem.py``, and ``models/<x>_utils/`` packages),
never any of Mammoth's framework (``utils/``, ``backbone/``, ``datasets/``, ``models/utils/``). The model then runs
through this project's entry point (``app.runner.main``, what ``main.py`` calls), in a process forked from one that
has imported the clone once, in debug mode on the CIFAR-10 mini set: as ``seq-custom`` (the ``.npz`` file) and as
``seq-cifar10`` (the official on-disk layout written from it). Each run is classified as ``runs``, ``import``
(a module this project lacks), ``package`` (a third-party package that is not installed), ``setup`` (failed
before training), ``training`` (failed during the tasks) or ``timeout``, with its first error. ``--doc`` rewrites
the table between the markers of that file's "Mammoth's model files here" section.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
from pathlib import Path
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
SNAPSHOT = os.path.join(SHARED, "mammoth", "mammoth-e75a491.tar.gz")
DATA = os.path.join(SHARED, "data", "cifar10_mini.npz")
DATASETS = ("seq-custom", "seq-cifar10")
BEGIN, END = "<!-- mammoth-models:begin -->", "<!-- mammoth-models:end -->"
PROJECT_PACKAGES = ("models", "utils", "backbone", "datasets", "app", "mammoth_compat")
FRAMEWORK_DIRS = ("models/utils",)  # under models/ but Mammoth's framework: never copied
# values of the flags that Mammoth's model files declare required (those of Mammoth's own tests where it has one)
FLAG_VALUES = {"buffer_size": "50", "alpha": "0.5", "beta": "0.5", "e_lambda": "0.4", "gamma": "0.85", "c": "0.5",
               "xi": "1.0", "der_alpha": "0.3", "der_beta": "0.8", "lambda_fp": "0.1"}
RUN_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CL_NO_DOWNLOAD": "1", "CL_DEFAULT_NUM_WORKERS": "0"}
# further flags of Mammoth's own test lines for these model files (e.g. short inner loops in debug mode)
NOISY = ["--noise_rate", "0.4"]  # models whose observe takes the true labels of noisy-label training
LIDER = ["--alpha_lip_lambda", "0.5", "--beta_lip_lambda", "0.5"]
MODEL_FLAGS = {"gdumb": ["--fitting_epochs", "2"], "gdumb_lider": ["--fitting_epochs", "2", *LIDER],
               "derpp_lider": LIDER, "er_ace_lider": LIDER, "icarl_lider": LIDER,
               "spr": ["--spr_debug_mode", "1", *NOISY], "cnll": ["--cnll_debug_mode", "1", *NOISY],
               "er_ace_aer_abs": NOISY, "puridiver": NOISY, "bic": ["--bic_epochs", "5"],
               "lucir": ["--fitting_epochs", "2"],
               # CaSpeR's k-NN graph over a replay batch needs k below the batch size (4 here, 32 in Mammoth's tests)
               **{f"{m}_casper": ["--knn_laplace", "3"] for m in ("derpp", "er_ace", "icarl", "xder_rpc")},
               "twf": ["--lambda_diverse_loss", "0.1", "--lambda_fp_replay", "0.1"]}
COMMON = ["--n_epochs", "1", "--batch_size", "4", "--lr", "0.03", "--seed", "0", "--debug_mode", "1",
          "--num_workers", "0", "--non_verbose", "1", "--backbone", "resnet18", "--plots", "0", "--traceback"]


@dataclass
class Outcome:
    """One model file on one dataset."""
    model: str
    dataset: str
    outcome: str  # runs | import | package | setup | training | timeout
    first_error: str
    seconds: float


def extract(snapshot: str, into: str) -> str:
    """Extract the snapshot; returns the folder holding Mammoth's ``main.py`` and ``models/``."""
    with tarfile.open(snapshot) as tar:
        tar.extractall(into, filter="data")
    for folder, dirs, files in os.walk(into):
        if "main.py" in files and "models" in dirs:
            return folder
    raise SystemExit(f"error: {snapshot} holds no main.py beside a models/ folder")


def model_files(mammoth: str) -> list[str]:
    """Names (without ``.py``) of the model files of Mammoth's ``models/`` folder."""
    folder = os.path.join(mammoth, "models")
    return sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("__"))


def imported_modules(path: str) -> set[str]:
    """Dotted names of the modules a Python file imports (absolute imports; relative ones resolved)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    package = os.path.dirname(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.add("." * node.level + (node.module or "") + "@" + package)
            elif node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def method_code(mammoth: str, model: str) -> list[str]:
    """Paths (relative to Mammoth's root) of the method code ``models/<model>.py`` needs from ``models/``,
    itself included: sibling model files and ``models/<x>_utils`` packages, followed transitively."""
    todo, seen = [f"models/{model}.py"], set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        files = [rel] if rel.endswith(".py") else [os.path.relpath(os.path.join(d, f), mammoth)
                                                   for d, _, fs in os.walk(os.path.join(mammoth, rel))
                                                   for f in fs if f.endswith(".py")]
        for path in files:
            for name in imported_modules(os.path.join(mammoth, path)):
                if "@" in name:  # a relative import inside a method package: the package is copied whole
                    continue
                parts = name.split(".")
                if parts[0] != "models" or len(parts) < 2 or "/".join(parts[:2]) in FRAMEWORK_DIRS:
                    continue
                if os.path.isdir(os.path.join(mammoth, "models", parts[1])):
                    todo.append(f"models/{parts[1]}")
                elif os.path.isfile(os.path.join(mammoth, "models", parts[1] + ".py")):
                    todo.append(f"models/{parts[1]}.py")
    return sorted(seen)


def required_flags(path: str) -> list[str]:
    """The ``--flag`` names a model file declares ``required=True`` (and ``buffer_size`` for rehearsal files)."""
    source = Path(path).read_text(encoding="utf-8")
    flags = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args:
            required = any(k.arg == "required" and isinstance(k.value, ast.Constant) and k.value.value
                           for k in node.keywords)
            first = node.args[0]
            if required and isinstance(first, ast.Constant) and str(first.value).startswith("--"):
                flags.append(str(first.value)[2:])
    if "add_rehearsal_args" in source and "buffer_size" not in flags:
        flags.append("buffer_size")
    return flags


def write_cifar10(npz: str, base_path: str) -> None:
    """``npz`` as ``<base_path>/CIFAR10/cifar-10-batches-py`` (five train batches and ``test_batch``)."""
    folder = os.path.join(base_path, "CIFAR10", "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    with np.load(npz) as data:
        splits = {"train": (data["x_train"], data["y_train"]), "test": (data["x_test"], data["y_test"])}
    x, y = splits["train"]
    parts = [(f"data_batch_{i + 1}", idx) for i, idx in enumerate(np.array_split(np.arange(len(y)), 5))]
    batches = [(name, x[idx], y[idx]) for name, idx in parts] + [("test_batch", *splits["test"])]
    for name, bx, by in batches:
        with open(os.path.join(folder, name), "wb") as fh:
            pickle.dump({"batch_label": name, "labels": [int(v) for v in by],
                         "data": np.ascontiguousarray(bx.reshape(len(by), -1), dtype=np.uint8)}, fh, protocol=4)


def make_clone(into: str) -> str:
    """The git-tracked files of this project under ``into``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, listed.decode().split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(into, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(into, rel))
    return into


def command(mammoth: str, model: str, dataset: str, data: str, base_path: str) -> list[str]:
    argv = ["--model", model, "--dataset", dataset, "--base_path", base_path, *COMMON]
    if dataset == "seq-custom":
        argv += ["--data_path", data, "--n_tasks", "5"]
    for flag in required_flags(os.path.join(mammoth, "models", f"{model}.py")):
        argv += [f"--{flag}", FLAG_VALUES.get(flag, "1")]
    return argv + MODEL_FLAGS.get(model, [])


_MISSING = re.compile(r"No module named '([\w.]+)'")


def classify(returncode: Optional[int], output: str) -> tuple[str, str]:
    """(outcome, first error) of a finished run (``returncode`` None: it timed out)."""
    if returncode is None:
        return "timeout", ""
    if returncode == 0:
        return "runs", ""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if ln.startswith("error:")), None) or \
        next((ln for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", ln)), None) or \
        (lines[-1] if lines else f"exit code {returncode}")
    error = re.sub(r"(?<![\w:/])(/[\w.+-]+)+/", "", error)[:160]  # no machine paths in the table
    missing = _MISSING.search(error)
    if "pip install" in error:  # a model file's own message about a package it needs
        return "package", error
    if missing:
        top = missing.group(1).split(".")[0]
        return ("import" if top in PROJECT_PACKAGES else "package"), error
    if "importing models." in error:
        return "import", error
    if re.search(r'File ".*utils/training\.py", line \d+, in (train|run_epochs)\b', output):
        return "training", error
    return "setup", error


def _child(clone: str, run_dir: str, argv: list[str], log: str) -> None:
    """In a forked process: run this project's ``main`` with ``argv``, the clone's ``models/`` replaced by
    ``run_dir/models``; output to ``log``; exits with the run's code."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(run_dir)
        os.environ.update(RUN_ENV)
        import traceback
        import torch
        torch.set_num_threads(1)
        import models
        from utils.registry import _cached_scan
        models.__path__[:] = [os.path.join(run_dir, "models")]  # the model file's folder, as if dropped there
        for name in [n for n in sys.modules if n.startswith("models.") and not n.startswith("models.utils")]:
            del sys.modules[name]  # model modules the parent imported: found again in the run's folder
        _cached_scan.cache_clear()
        from app.runner import main as project_main
        try:
            code = project_main(argv)
        except BaseException:  # noqa: BLE001 - everything a model file raises is the outcome
            traceback.print_exc()
            code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def prepare(mammoth: str, model: str, dataset: str, clone: str, work: str) -> str:
    """A run folder: a copy of the clone's ``models/`` with ``model``'s code from Mammoth's snapshot."""
    run_dir = tempfile.mkdtemp(prefix=f"{model}-{dataset}-", dir=work)
    shutil.copytree(os.path.join(clone, "models"), os.path.join(run_dir, "models"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for rel in method_code(mammoth, model):
        src, dst = os.path.join(mammoth, rel), os.path.join(run_dir, rel)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    return run_dir


def run_all(mammoth: str, jobs: list[tuple[str, str]], clone: str, work: str, data: str, timeout: float,
            parallel: int) -> list[Outcome]:
    """Run every (model, dataset) job, ``parallel`` at a time, each in a process forked from one that has
    imported the clone's framework (so each run pays only for its own model file, data and training)."""
    import signal
    import time
    if clone not in sys.path:
        sys.path.insert(0, clone)
    import app.runner  # noqa: F401 - imported once, before forking
    pending, running, done = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < max(1, parallel):
            model, dataset = pending.pop(0)
            run_dir = prepare(mammoth, model, dataset, clone, work)
            log = os.path.join(run_dir, "out.txt")
            argv = command(mammoth, model, dataset, data, os.path.join(work, "data"))
            argv += ["--checkpoint_path", os.path.join(run_dir, "ckpt"), "--results_path", "results"]
            pid = os.fork()
            if pid == 0:
                _child(clone, run_dir, argv, log)
            running[pid] = (model, dataset, run_dir, log, time.perf_counter())
        time.sleep(0.2)
        for pid, (model, dataset, run_dir, log, started) in list(running.items()):
            finished, status = os.waitpid(pid, os.WNOHANG)
            elapsed = time.perf_counter() - started
            if not finished and elapsed > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                code: Optional[int] = None
            elif not finished:
                continue
            else:
                code = os.waitstatus_to_exitcode(status)
            output = Path(log).read_text(encoding="utf-8", errors="replace") if os.path.exists(log) else ""
            outcome, error = classify(code, output)
            done[(model, dataset)] = Outcome(model, dataset, outcome, error, round(elapsed, 1))
            r = done[(model, dataset)]
            print(f"{r.model:24s} {r.dataset:12s} {r.outcome:9s} {r.seconds:6.1f}s {r.first_error}", flush=True)
            del running[pid]
            shutil.rmtree(run_dir, ignore_errors=True)
    return [done[job] for job in jobs]


def table(results: list[Outcome], models: list[str], mammoth: str, merged: bool = False) -> str:
    """The markdown section body: totals per dataset, then one row per model file."""
    by = {(r.model, r.dataset): r for r in results}
    datasets = [d for d in DATASETS if any(r.dataset == d for r in results)]
    how = " (the outcomes of several invocations, the latest run of each pair kept, merged with `--merge`)" \
        if merged else ""
    lines = [f"Measured on {len(models)} model files of Mammoth's snapshot with "
             f"`python -m benchmarks.mammoth_models --doc docs/mammoth.md`{how}.", ""]
    missing = Outcome("", "", "not measured", "", 0.0)
    by.update({(m, d): missing for m in models for d in DATASETS if (m, d) not in by})
    for d in datasets:
        counts: dict[str, int] = {}
        for m in models:
            counts[by[(m, d)].outcome] = counts.get(by[(m, d)].outcome, 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if k != "runs")
        lines.append(f"- `{d}`: **{counts.get('runs', 0)} of {len(models)} run**" + (f" ({detail})" if detail else ""))
    lines += ["", "| model file | method code copied with it | " + " | ".join(f"`{d}`" for d in datasets)
              + " | first error |", "|---|---|" + "---|" * len(datasets) + "---|"]
    for m in models:
        extra = [os.path.basename(p).removesuffix(".py") for p in method_code(mammoth, m) if p != f"models/{m}.py"]
        errors = []
        for d in datasets:
            err = by[(m, d)].first_error
            if err and err not in errors:
                errors.append(err)
        cells = [by[(m, d)].outcome for d in datasets]
        lines.append(f"| `{m}` | {', '.join(extra) or '-'} | " + " | ".join(cells) + " | "
                     + " / ".join(e.replace("|", "\\|") for e in errors) + " |")
    return "\n".join(lines)


def write_doc(path: str, body: str) -> None:
    """Replace the text between the markers of ``path`` with ``body``."""
    text = Path(path).read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {path} lacks the markers {BEGIN} and {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{BEGIN}\n{body}\n{END}{tail}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", default=SNAPSHOT, help="Mammoth's source tarball")
    parser.add_argument("--data", default=DATA, help="the CIFAR-10 mini .npz")
    parser.add_argument("--models", default="", help="comma-separated model files (default: all)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--out", default="", help="write the outcomes as JSON here")
    parser.add_argument("--doc", default="", help="rewrite the table between the markers of this markdown file")
    parser.add_argument("--merge", action="append", default=[],
                        help="a previous --out file (repeatable, later ones win): its outcomes stand for the runs not "
                             "repeated now (the table then covers all of them)")
    parser.add_argument("--no_run", action="store_true", help="run nothing: the table of the --merge files")
    args = parser.parse_args(argv)
    for path in (args.snapshot, args.data):
        if not os.path.isfile(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    datasets = [d for d in args.datasets.split(",") if d]
    if not set(datasets) <= set(DATASETS):
        print(f"error: --datasets takes {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    os.environ.update(RUN_ENV)  # before torch is imported
    with tempfile.TemporaryDirectory(prefix="mammoth-models-") as work:
        mammoth = extract(args.snapshot, os.path.join(work, "mammoth"))
        names = model_files(mammoth)
        models = [m for m in args.models.split(",") if m] or names
        unknown = sorted(set(models) - set(names))
        if unknown:
            print(f"error: no Mammoth model file {', '.join(unknown)}", file=sys.stderr)
            return 2
        clone = "" if args.no_run else make_clone(os.path.join(work, "clone"))
        if "seq-cifar10" in datasets and not args.no_run:
            write_cifar10(args.data, os.path.join(work, "data"))
        jobs = [(m, d) for m in models for d in datasets]
        results = [] if args.no_run else run_all(mammoth, jobs, clone, work, args.data, args.timeout, args.jobs)
        if args.merge:
            merged: dict[tuple[str, str], Outcome] = {}
            for path in args.merge:
                with open(path, encoding="utf-8") as fh:
                    merged.update({(o["model"], o["dataset"]): Outcome(**o) for o in json.load(fh)})
            merged.update({(r.model, r.dataset): r for r in results})
            results = list(merged.values())
            models = sorted(set(models) | {r.model for r in results})
        body = table(results, models, mammoth, merged=bool(args.merge))
    print(body.split("\n\n")[1])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in results], fh, indent=1)
    if args.doc:
        write_doc(args.doc, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
