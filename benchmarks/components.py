"""Where the class-IL accuracy of an ITA/IEL run comes from: heads against modules, from its checkpoint.

    python -m benchmarks.components --checkpoint checkpoints/ita_c100/task_10.pt [--drops 1] [--out comp.json]

Evaluates every task's test set (mean over tasks of class-IL and task-IL, as the run's final accuracy) with

* ``full``: theta0 + (1/T) sum_t tau_t with the trained heads (the run's own result);
* ``theta0_heads``: theta0 with the trained heads (every module dropped);
* ``pretuned``: theta0 with the pre-tuned heads, i.e. pre-tuning alone (linear probe of each task's head, then
  the alignment of all heads on GMM samples at the last task's start; no module, no head training);
* ``modules_pretuned``: the full composition with the pre-tuned heads;

and, with ``--drops 1``, the composition without each task's module in turn (weights 1/(T-1) over the
others): the dropped task's class-IL change (target) and the mean change of the other tasks (control).
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from utils.args import parse_bool
from utils.errors import UserError


@contextmanager
def pretuned_heads(model: Any) -> Iterator[None]:
    """Evaluate with the pre-tuned (probed + aligned) heads in place of the trained ones; restored on exit."""
    trained = {k: v.clone() for k, v in model.net.classifier.state_dict().items()}
    model.net.classifier.load_state_dict(model.pretuned_head.state_dict())
    try:
        yield
    finally:
        model.net.classifier.load_state_dict(trained)


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def components(model: Any, dataset: Any, drops: bool) -> dict[str, Any]:
    """Per-task and mean accuracies of the four head/module combinations, and the per-module drops."""
    from app.edit import edit_weights
    from utils.evaluate import evaluate

    n_tasks = model.pool.n_tasks

    def run(weights: Optional[list[float]]) -> tuple[list[float], list[float]]:
        model.eval_task_weights = weights
        try:
            return evaluate(model, dataset)
        finally:
            model.eval_task_weights = None
            model.compose_eval()

    report: dict[str, Any] = {"n_tasks": n_tasks}
    theta0 = [0.0] * n_tasks
    for name, weights, pretuned in (("full", None, False), ("theta0_heads", theta0, False),
                                    ("pretuned", theta0, True), ("modules_pretuned", None, True)):
        if pretuned:
            with pretuned_heads(model):
                cil, til = run(weights)
        else:
            cil, til = run(weights)
        report[name] = {"class_il": cil, "task_il": til, "mean_class_il": mean(cil), "mean_task_il": mean(til)}
    if drops and n_tasks > 1:
        full = report["full"]["class_il"]
        rows = []
        for t in range(n_tasks):
            cil, _ = run(edit_weights(n_tasks, [s for s in range(n_tasks) if s != t], False))
            others = [s for s in range(n_tasks) if s != t]
            rows.append({"task": t, "target_change": cil[t] - full[t],
                         "control_change": mean([cil[s] - full[s] for s in others]),
                         "control_max_abs_change": max(abs(cil[s] - full[s]) for s in others)})
        report["drops"] = rows
        report["drop_summary"] = {"mean_target_change": mean([r["target_change"] for r in rows]),
                                  "mean_control_change": mean([r["control_change"] for r in rows]),
                                  "max_control_abs_change": max(r["control_max_abs_change"] for r in rows)}
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'combination':42s} {'class-IL':>9s} {'task-IL':>8s}"]
    names = {"full": "modules + trained heads (the run)", "theta0_heads": "theta0 + trained heads",
             "pretuned": "theta0 + pre-tuned heads (pre-tuning alone)",
             "modules_pretuned": "modules + pre-tuned heads"}
    for key, label in names.items():
        lines.append(f"{label:42s} {report[key]['mean_class_il']:9.2f} {report[key]['mean_task_il']:8.2f}")
    if "drops" in report:
        for row in report["drops"]:
            lines.append(f"drop module {row['task']}: target {row['target_change']:+.2f}, control mean "
                         f"{row['control_change']:+.2f} (max |change| {row['control_max_abs_change']:.2f})")
        s = report["drop_summary"]
        lines.append(f"drop summary: target {s['mean_target_change']:+.2f}, control {s['mean_control_change']:+.2f}"
                     f", max |control change| {s['max_control_abs_change']:.2f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.components", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a second_order/ita/iel checkpoint (--savecheck last)")
    parser.add_argument("--drops", type=parse_bool, default=False, help="also drop each task's module in turn")
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    from app.edit import load_model
    from utils.io import write_json

    try:
        _, dataset, model, _ = load_model(args.checkpoint, args.device)
        if not hasattr(model, "pretuned_head"):
            raise UserError(f"{args.checkpoint} is not a second_order/ita/iel checkpoint (no pre-tuned heads)")
        report = components(model, dataset, args.drops)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(format_report(report))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
