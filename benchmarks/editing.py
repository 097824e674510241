"""The paper's editing experiment (§5): specialization and unlearning by composing task modules, ITA vs IEL vs TMC.

    python -m benchmarks.editing --methods ita,iel,tmc --out benchmarks/out/editing \
        -- --dataset seq-custom --data_path ../shared/data/cifar100_mini.npz --n_tasks 10 --img_size 64 \
           --normalization half --backbone efficientnet_lite0 --lr 0.001 --n_epochs 1

Each method is trained once (flags after ``--`` go to every run, ``--extra "ita:--alpha_ita 1"`` to one;
``--checkpoint ita=PATH`` uses a finished checkpoint instead; ``LABEL=MODEL`` in ``--methods`` runs a model under
its own label, e.g. ``ita_free=ita``), saving a checkpoint after every task in ``<out>/checkpoints/<label>``; with
``--reuse 1`` a finished run (its results file complete) is reused and an interrupted one continues from its last
finished task (``--resume``). Then, on the last checkpoint's test sets:

- specialization: compose only the modules of the first, the middle, the last task, of those three together,
  and of every single task (weights 1/|kept|; ``--raw_weights`` keeps the reference's 1/T);
- unlearning: leave out each task's module in turn (weights 1/(T-1));
- theta0 with the same heads: every module dropped.

Target = the edited tasks (kept or dropped; every task for theta0), control = the others; class-IL
accuracy (%) of the full composition ("before") and the edited one ("after"); each record also keeps every task's
class-IL and task-IL accuracy before and after. Writes ``editing.md`` (the
summary table), ``editing.csv`` (every edit) and ``editing.png`` (the summary as grouped bars). Each distinct
composition is evaluated once (TMC: from per-task tangent features, see ``EditEvaluator``); a method's finished
edits are kept in ``<out>/records/<method>.json`` and reused like its checkpoint.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from typing import Any, Optional

from benchmarks.compare import exit_code, merge_flags, parse_extras, parse_with_shared, print_outcome
from utils.args import parse_bool
from utils.errors import UserError
from utils.io import write_json

EDITABLE = ("ita", "iel", "tmc", "second_order", "apt")


def edits(n_tasks: int) -> list[tuple[str, str, list[int], list[int]]]:
    """(name, kind, targets, kept modules) of every edit of the protocol for ``n_tasks`` tasks."""
    first, middle, last = 0, n_tasks // 2, n_tasks - 1
    out = [("keep all", "check", list(range(n_tasks)), list(range(n_tasks)))]
    trio = sorted({first, middle, last})
    out += [(f"keep first ({first})", "specialize", [first], [first]),
            (f"keep middle ({middle})", "specialize", [middle], [middle]),
            (f"keep last ({last})", "specialize", [last], [last]),
            (f"keep {','.join(map(str, trio))}", "specialize", trio, trio)]
    out += [(f"keep {t}", "specialize-single", [t], [t]) for t in range(n_tasks)]
    out += [(f"drop {t}", "unlearn", [t], [s for s in range(n_tasks) if s != t]) for t in range(n_tasks)]
    out.append(("theta0 (all dropped)", "theta0", list(range(n_tasks)), []))
    return out


def _mean(values: list[float], tasks: list[int]) -> Optional[float]:
    return sum(values[t] for t in tasks) / len(tasks) if tasks else None


INPUT_CACHE_BYTES = 1 << 30  # test inputs are kept in memory across the edits up to this size


def cached_loaders(loaders: list[Any], limit: int = INPUT_CACHE_BYTES) -> list[Any]:
    """Each test loader as a list of its (inputs, labels) batches, transformed once instead of once per edit
    (the test transform is deterministic); the loaders themselves when the inputs would exceed ``limit`` bytes."""
    batches, total = [], 0
    for loader in loaders:
        kept = []
        for batch in loader:
            total += batch[0].numel() * batch[0].element_size()
            if total > limit:
                return list(loaders)
            kept.append((batch[0], batch[1]))
        batches.append(kept)
    return batches


def linear_feature_accuracy(model: Any, terms: list[tuple[Any, list[Any], Any]], weights: list[float],
                            n_visible: int, offsets: Optional[list[tuple[int, int]]] = None
                            ) -> tuple[list[float], list[float]]:
    """(class-IL, task-IL) accuracy (%) per task of ``head(base + sum_t w_t term_t)`` from cached feature terms;
    task-IL restricts the logits to the task's classes ``offsets[t]`` (empty without ``offsets``)."""
    accuracies, task_il = [], []
    for task, (base, per_task, labels) in enumerate(terms):
        feats = base.clone()
        for w, term in zip(weights, per_task):
            if w != 0:
                feats += w * term
        with model.autocast():
            logits = model.net.classifier(feats)
        predicted = logits[:, :n_visible].float().argmax(dim=1)
        accuracies.append(100.0 * (predicted == labels).sum().item() / max(labels.numel(), 1))
        if offsets is not None:
            lo, hi = offsets[task]
            within = logits[:, lo:hi].float().argmax(dim=1) + lo
            task_il.append(100.0 * (within == labels).sum().item() / max(labels.numel(), 1))
    return accuracies, task_il


class EditEvaluator:
    """Class-IL and task-IL accuracy per task of the composition with given module weights (None: the model's
    own), each
    distinct weight vector evaluated once. Test inputs are transformed once. A model whose features are linear
    in the composition weights (``task_feature_terms``: TMC's tangent features) is run once per test batch and
    every edit is a weighted sum of its cached per-task feature terms followed by the head."""

    def __init__(self, model: Any, dataset: Any):
        self.model, self.dataset = model, dataset
        self.n_tasks = model.pool.n_tasks
        self.loaders = cached_loaders(dataset.test_loaders)
        self.n_visible = dataset.get_offsets(len(dataset.test_loaders) - 1)[1]
        self.terms: Optional[list[tuple[Any, list[Any], Any]]] = None
        self.passes = 0  # evaluations of the network over the whole test set (for tests and the log)
        self._memo: dict[tuple[float, ...], tuple[list[float], list[float]]] = {}

    def _full_weights(self) -> tuple[float, ...]:
        return tuple(self.model.composition_weights()) if hasattr(self.model, "composition_weights") else \
            tuple(1.0 / self.n_tasks for _ in range(self.n_tasks))

    def accuracy(self, weights: Optional[list[float]]) -> list[float]:
        """Class-IL accuracy (%) per task."""
        return self.accuracies(weights)[0]

    def accuracies(self, weights: Optional[list[float]]) -> tuple[list[float], list[float]]:
        """(class-IL, task-IL) accuracy (%) per task."""
        key = self._full_weights() if weights is None else tuple(float(w) for w in weights)
        if key not in self._memo:
            self._memo[key] = self._evaluate(list(key) if weights is not None else None)
        return list(self._memo[key][0]), list(self._memo[key][1])

    def _evaluate(self, weights: Optional[list[float]]) -> tuple[list[float], list[float]]:
        import torch

        from utils.evaluate import evaluate
        from utils.modes import eval_mode

        model = self.model
        if hasattr(model, "task_feature_terms"):
            if self.terms is None:
                with eval_mode(model), torch.no_grad():
                    self.terms = [self._terms(loader) for loader in self.loaders]
                self.passes += 1
            with eval_mode(model), torch.no_grad():
                offsets = [self.dataset.get_offsets(t) for t in range(len(self.terms))]
                return linear_feature_accuracy(model, self.terms, weights or list(self._full_weights()),
                                               self.n_visible, offsets)
        model.eval_task_weights = weights
        model.compose_eval()
        original = self.dataset.test_loaders
        self.dataset.test_loaders = self.loaders
        try:
            accuracies, task_il = evaluate(model, self.dataset)
        finally:
            self.dataset.test_loaders = original
        self.passes += 1
        return accuracies, task_il

    def _terms(self, loader: Any) -> tuple[Any, list[Any], Any]:
        import torch

        bases, per_task, labels = [], [[] for _ in range(self.n_tasks)], []
        for batch in loader:
            inputs = batch[0].to(self.model.device)
            with self.model.autocast():
                base, terms = self.model.task_feature_terms(inputs)
            bases.append(base.float())
            for t, term in enumerate(terms):
                per_task[t].append(term.float())
            labels.append(batch[1].to(self.model.device))
        return torch.cat(bases), [torch.cat(chunks) for chunks in per_task], torch.cat(labels)


def run_protocol(model: Any, dataset: Any, raw_weights: bool) -> list[dict[str, Any]]:
    """One record per edit: target/control class-IL accuracy before (full composition) and after."""
    import torch

    from app.edit import edit_weights

    n_tasks = model.pool.n_tasks
    records = []
    started = time.perf_counter()
    model.eval_task_weights = None  # "before" is the model's own full composition
    evaluator = EditEvaluator(model, dataset)
    with torch.no_grad():
        try:
            full, full_til = evaluator.accuracies(None)
            for name, kind, targets, kept in edits(n_tasks):
                weights = edit_weights(n_tasks, kept, raw_weights) if kept else [0.0] * n_tasks
                edited, edited_til = evaluator.accuracies(weights)
                controls = [t for t in range(n_tasks) if t not in targets]
                records.append({"edit": name, "kind": kind, "targets": targets, "weights": weights,
                                "target_before": _mean(full, targets), "target_after": _mean(edited, targets),
                                "control_before": _mean(full, controls), "control_after": _mean(edited, controls),
                                "per_task_after": edited, "per_task_before": full,
                                "per_task_til_after": edited_til, "per_task_til_before": full_til})
        finally:
            model.eval_task_weights = None
            model.compose_eval()
    print(f"[editing] {len(records)} edits, {evaluator.passes} passes over the test set, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return records


def summary_rows(method: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows: first/middle/last/trio specialization, means over single tasks, unlearning, theta0."""
    rows = [dict(r, method=method) for r in records if r["kind"] in ("specialize", "theta0")]
    for kind, label in (("specialize-single", "keep one task (mean over tasks)"),
                        ("unlearn", "drop one task (mean over tasks)")):
        group = [r for r in records if r["kind"] == kind]
        row = {"method": method, "edit": label, "kind": kind}
        for key in ("target_before", "target_after", "control_before", "control_after"):
            values = [r[key] for r in group if r[key] is not None]
            row[key] = sum(values) / len(values) if values else None
        rows.insert(-1, row)
    return rows


def _cell(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_outputs(results: dict[str, list[dict[str, Any]]], out: str) -> dict[str, str]:
    from utils.plots import plot_edit_table
    from utils.tables import csv_text, markdown_table, number, write_tables

    values = ("target_before", "target_after", "control_before", "control_after")
    summary, plot_rows = [], []
    for method, records in results.items():
        for row in summary_rows(method, records):
            summary.append([method, row["edit"], *(_cell(row[k]) for k in values)])
            if row["kind"] in ("specialize-single", "unlearn", "theta0"):
                plot_rows.append({"name": f"{method}: {row['edit'].split(' (')[0]}",
                                  **{k: row[k] for k in values if row[k] is not None}})
    lines = ["# Editing (specialization and unlearning by composing task modules)", "",
             "Class-IL accuracy (%); before = all modules composed, after = the edit.", ""]
    lines += markdown_table(["method", "edit", "target before", "target after", "control before", "control after"],
                            summary)
    table = csv_text(["method", "edit", "kind", "targets", *values], [
        [method, r["edit"], r["kind"], " ".join(map(str, r["targets"])), *(number(r[k]) for k in values)]
        for method, records in results.items() for r in records])
    paths = write_tables(os.path.join(out, "editing"), lines, table)
    plot_edit_table(plot_rows, paths["png"], title="Editing: target/control class-IL before and after")
    return paths


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    found = {}
    for item in items:
        method, sep, path = item.partition("=")
        if not sep or not os.path.isfile(path):
            raise UserError(f"--checkpoint '{item}' must be METHOD=PATH to an existing checkpoint file")
        found[method.strip()] = path
    return found


def last_checkpoint(folder: str) -> Optional[str]:
    files = sorted(glob.glob(os.path.join(folder, "**", "*.pt"), recursive=True), key=os.path.getmtime)
    return files[-1] if files else None


def run_complete(results_file: str) -> bool:
    """The run that writes ``results_file`` finished every task (its last checkpoint is the final model)."""
    try:
        with open(results_file) as fh:
            return json.load(fh).get("complete") is True
    except (OSError, ValueError, AttributeError):
        return False


def records_path(out: str, method: str) -> str:
    return os.path.join(out, "records", f"{method}.json")


def saved_records(out: str, method: str, checkpoint: str, raw_weights: bool) -> Optional[list[dict[str, Any]]]:
    """The protocol's records of an earlier run on the same checkpoint file (unchanged since) and weighting."""
    try:
        with open(records_path(out, method)) as fh:
            saved = json.load(fh)
    except (OSError, ValueError):
        return None
    if saved.get("checkpoint") != os.path.abspath(checkpoint) or saved.get("raw_weights") != raw_weights \
            or os.path.getmtime(records_path(out, method)) < os.path.getmtime(checkpoint):
        return None
    records = saved.get("records")
    return records if records and "per_task_til_after" in records[0] else None  # older records: no task-IL


def parse_methods(text: str) -> dict[str, str]:
    """``"ita,ita_free=ita"`` -> ``{"ita": "ita", "ita_free": "ita"}`` (label -> model)."""
    methods = {}
    for item in (m.strip() for m in text.split(",") if m.strip()):
        label, _, model = item.partition("=")
        label, model = label.strip(), (model or label).strip()
        if model not in EDITABLE:
            raise UserError(f"--methods: '{model}' cannot be edited; choose from {', '.join(EDITABLE)}")
        methods[label] = model
    return methods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.editing", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="ita,iel,tmc", help=f"comma-separated, from {', '.join(EDITABLE)}; LABEL=MODEL runs MODEL under LABEL "
                        "(its own --extra, checkpoint and records)")
    parser.add_argument("--checkpoint", action="append", default=[], help="METHOD=PATH: edit this checkpoint")
    parser.add_argument("--extra", action="append", default=[], help="'METHOD:--flag value ...' (repeatable)")
    parser.add_argument("--raw_weights", type=parse_bool, default=False, help="kept modules weigh 1/T, not 1/|kept|")
    parser.add_argument("--out", default="benchmarks/out/editing", help="output folder (git-ignored by default)")
    parser.add_argument("--reuse", type=parse_bool, default=True,
                        help="reuse checkpoints and finished edits (<out>/records/<method>.json) already in --out")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    return parser


def editing(argv: Optional[list[str]] = None) -> dict[str, str]:
    args, shared = parse_with_shared(build_parser(), argv)
    methods = parse_methods(args.methods)
    extras, given = parse_extras(args.extra), parse_checkpoints(args.checkpoint)
    from app.edit import load_model
    from app.runner import run

    results = {}
    for method in methods:
        path = given.get(method)
        folder = os.path.join(args.out, "checkpoints", method)
        results_file = os.path.join(args.out, "results", f"{method}.json")
        if path is None:
            path = last_checkpoint(folder) if args.reuse and run_complete(results_file) else None
        if path is None:  # a checkpoint after every task: an interrupted run continues at its next task
            command = ["--model", methods[method], *merge_flags(shared, extras.get(method, []), [
                "--savecheck", "task", "--resume", "1" if args.reuse else "0", "--checkpoint_path", folder,
                "--non_verbose", "1", "--results_file", results_file])]
            print(f"[editing] {method}: python main.py {' '.join(command)}", flush=True)
            run(command)
            path = last_checkpoint(folder)
            if path is None:
                raise UserError(f"{method}: the run wrote no checkpoint in {folder}")
        results[method] = saved_records(args.out, method, path, args.raw_weights) if args.reuse else None
        if results[method] is None:
            print(f"[editing] {method}: editing {path}", flush=True)
            _, dataset, model, _ = load_model(path, args.device)
            results[method] = run_protocol(model, dataset, args.raw_weights)
            write_json(records_path(args.out, method), {"checkpoint": os.path.abspath(path),
                                                        "raw_weights": args.raw_weights,
                                                        "records": results[method]})
    paths = write_outputs(results, args.out)
    print_outcome("editing", paths, [])
    return paths


def main(argv: Optional[list[str]] = None) -> int:
    def run() -> int:
        editing(argv)
        return 0
    return exit_code(run)


if __name__ == "__main__":
    sys.exit(main())
