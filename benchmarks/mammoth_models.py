"""How many of Mammoth's model files run here unchanged (debug mode, ``seq-custom`` and ``seq-cifar10``).

    python -m benchmarks.mammoth_models [--models er,der] [--datasets seq-custom,seq-cifar10] [--jobs 2]
        [--timeout 300] [--out FILE.json] [--doc docs/mammoth.md]

Mammoth's source snapshot is extracted into a temporary folder. For each model file of its ``models/`` folder, a
temporary clone of this project (its git-tracked files) receives the file unchanged, together with the method's own
code the file imports from ``models/`` (sibling model files such as ``gem.py``, and ``models/<x>_utils/`` packages),
never any of Mammoth's framework (``utils/``, ``backbone/``, ``datasets/``, ``models/utils/``). The model then runs
with this project's ``main.py`` in debug mode on the CIFAR-10 mini set: as ``seq-custom`` (the ``.npz`` file) and
as ``seq-cifar10`` (the official on-disk layout written from it). Each run is classified as ``runs``, ``import``
(a module this project lacks), ``package`` (a third-party package that is not installed), ``setup`` (failed
before training), ``training`` (failed during the tasks) or ``timeout``, with its first error. ``--doc`` rewrites
the table between the markers of that file's "Mammoth's model files here" section.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
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
    tree = ast.parse(open(path, encoding="utf-8").read())
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
    source = open(path, encoding="utf-8").read()
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
    return argv


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
    error = re.sub(r"(/[\w.+-]+)+/", "", error)[:160]  # no machine paths in the table
    missing = _MISSING.search(error)
    if missing:
        top = missing.group(1).split(".")[0]
        return ("import" if top in PROJECT_PACKAGES else "package"), error
    if "importing models." in error:
        return "import", error
    if re.search(r'File ".*utils/training\.py", line \d+, in (train|run_epochs)\b', output):
        return "training", error
    return "setup", error


def run_one(mammoth: str, model: str, dataset: str, clone: str, work: str, data: str, timeout: float) -> Outcome:
    """Copy ``model``'s code into a fresh copy of ``clone`` and run it on ``dataset``."""
    import time
    run_dir = tempfile.mkdtemp(prefix=f"{model}-{dataset}-", dir=work)
    shutil.copytree(clone, run_dir, dirs_exist_ok=True)
    for rel in method_code(mammoth, model):
        src, dst = os.path.join(mammoth, rel), os.path.join(run_dir, rel)
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dst)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CL_NO_DOWNLOAD="1", CL_DEFAULT_NUM_WORKERS="0",
               PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=run_dir)
    argv = [sys.executable, "main.py", *command(mammoth, model, dataset, data, os.path.join(work, "data"))]
    argv += ["--checkpoint_path", os.path.join(run_dir, "ckpt"), "--results_path", "results"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=run_dir, env=env, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        code, output = None, ""
    seconds = time.perf_counter() - start
    shutil.rmtree(run_dir, ignore_errors=True)
    outcome, error = classify(code, output)
    return Outcome(model, dataset, outcome, error, round(seconds, 1))


def table(results: list[Outcome], models: list[str], mammoth: str) -> str:
    """The markdown section body: totals per dataset, then one row per model file."""
    by = {(r.model, r.dataset): r for r in results}
    datasets = [d for d in DATASETS if any(r.dataset == d for r in results)]
    lines = [f"Measured on {len(models)} model files of Mammoth's snapshot with "
             f"`python -m benchmarks.mammoth_models --doc docs/mammoth.md`.", ""]
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
    text = open(path, encoding="utf-8").read()
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
    args = parser.parse_args(argv)
    for path in (args.snapshot, args.data):
        if not os.path.isfile(path):
            print(f"error: {path} does not exist", file=sys.stderr)
            return 2
    datasets = [d for d in args.datasets.split(",") if d]
    if not set(datasets) <= set(DATASETS):
        print(f"error: --datasets takes {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mammoth-models-") as work:
        mammoth = extract(args.snapshot, os.path.join(work, "mammoth"))
        names = model_files(mammoth)
        models = [m for m in args.models.split(",") if m] or names
        unknown = sorted(set(models) - set(names))
        if unknown:
            print(f"error: no Mammoth model file {', '.join(unknown)}", file=sys.stderr)
            return 2
        clone = make_clone(os.path.join(work, "clone"))
        if "seq-cifar10" in datasets:
            write_cifar10(args.data, os.path.join(work, "data"))
        jobs = [(m, d) for m in models for d in datasets]
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            results = list(pool.map(lambda job: run_one(mammoth, job[0], job[1], clone, work, args.data,
                                                        args.timeout), jobs))
        for r in results:
            print(f"{r.model:24s} {r.dataset:12s} {r.outcome:9s} {r.seconds:6.1f}s {r.first_error}", flush=True)
        body = table(results, models, mammoth)
    print(body.split("\n\n")[1])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in results], fh, indent=1)
    if args.doc:
        write_doc(args.doc, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
