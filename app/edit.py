"""Edit a trained ``second_order`` (ITA/IEL), ``tmc`` or ``apt`` model by composing a subset of its task modules.

    python -m app.edit --checkpoint PATH --keep 0,3      # specialization: compose tasks 0 and 3 only
    python -m app.edit --checkpoint PATH --drop 2        # unlearning: leave task 2's module out
    python -m app.edit --checkpoint PATH --drop 2 --save edited.pt   # and keep the edited model

The dataset, backbone and model are rebuilt from the checkpoint's arguments. Every task's test set is
evaluated with the full composition (all modules, uniform weights), with the edited one and with theta0
and the same heads (every module dropped), which shows what the modules contribute. Targets
are the kept tasks (``--keep``) or the dropped ones (``--drop``); the other tasks are the controls.
Weights are 1/|kept| over the kept modules; ``--raw_weights`` keeps the reference's 1/T (docs §9 Q3).
``--save`` (``second_order``/``ita``/``iel`` only) writes the edited model as a checkpoint: every module rescaled so
that the model's own uniform composition is the edit (a dropped module becomes zero), with the edit (and the
accuracies measured here) under ``edit``; ``main.py --loadcheck edited.pt`` evaluates the edited model on the test
data again and reports it, and ``python -m app.edit`` can edit it again.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

import torch

from utils.args import index_list
from utils.errors import UserError


parse_task_list = index_list("task indices", "0,3")


def load_model(checkpoint: str, device: Optional[str] = None) -> tuple[Any, Any, Any, dict]:
    """(args, dataset with the finished tasks' test loaders, model, checkpoint) from a checkpoint file."""
    from app.config import parse_args
    from app.experiment import build_experiment, get_device
    from models import get_model_class
    from utils import checkpoints

    state = checkpoints.load_run_checkpoint(checkpoint)
    saved = state["args"]
    args = parse_args(["--model", saved["model"], "--dataset", saved["dataset"], "--non_verbose"],
                      checkpoint_args=saved)
    if not hasattr(get_model_class(args.model), "compose_eval"):
        raise UserError(f"{checkpoint} holds a '{args.model}' model; editing needs second_order, ita, iel, tmc or apt")
    experiment = build_experiment(args, get_device(device))
    dataset, model = experiment.dataset, experiment.model
    for _ in range(int(state["tasks_done"])):
        dataset.get_data_loaders()
    model.load_lean_checkpoint_state(state["model_state"], dataset, checkpoint)
    model.to(experiment.device)
    return args, dataset, model, state


def edit_weights(n_tasks: int, kept: list[int], raw: bool) -> list[float]:
    """Per-task weights: 1/|kept| on the kept modules (or 1/T with ``raw``), 0 elsewhere."""
    base = 1.0 / n_tasks if raw else 1.0 / len(kept)
    return [base if t in kept else 0.0 for t in range(n_tasks)]


def evaluate_edit(model: Any, dataset: Any, keep: Optional[list[int]] = None, drop: Optional[list[int]] = None,
                  raw_weights: bool = False) -> dict[str, Any]:
    """Accuracy of the full and the edited composition on every task, and target/control means."""
    from utils.evaluate import evaluate

    n_tasks = model.pool.n_tasks
    chosen = keep if keep is not None else drop
    if not chosen or max(chosen) >= n_tasks:
        raise UserError(f"task indices must lie in 0..{n_tasks - 1} (the checkpoint has {n_tasks} task modules)")
    kept = list(keep) if keep is not None else [t for t in range(n_tasks) if t not in drop]
    if not kept:
        raise UserError("--drop removes every module; keep at least one")
    targets = list(chosen)
    model.eval_task_weights = None
    full = evaluate(model, dataset)
    weights = edit_weights(n_tasks, kept, raw_weights)
    model.eval_task_weights = weights
    try:
        edited = evaluate(model, dataset)
        model.eval_task_weights = [0.0] * n_tasks  # theta0 with the same heads: every module dropped
        theta0 = evaluate(model, dataset)
    finally:
        model.eval_task_weights = None
        model.compose_eval()

    def mean(values: list[float], tasks: list[int]) -> Optional[float]:
        return sum(values[t] for t in tasks) / len(tasks) if tasks else None

    controls = [t for t in range(n_tasks) if t not in targets]
    all_tasks = list(range(n_tasks))
    return {"mode": "keep" if keep is not None else "drop", "kept": kept, "targets": targets,
            "controls": controls, "weights": weights, "raw_weights": raw_weights,
            "full_class_il": full[0], "full_task_il": full[1], "edited_class_il": edited[0],
            "edited_task_il": edited[1], "theta0_class_il": theta0[0], "theta0_task_il": theta0[1],
            "mean_class_il": {"full": mean(full[0], all_tasks), "edited": mean(edited[0], all_tasks),
                              "theta0": mean(theta0[0], all_tasks)},
            "target_class_il": {"full": mean(full[0], targets), "edited": mean(edited[0], targets)},
            "control_class_il": {"full": mean(full[0], controls), "edited": mean(edited[0], controls)}}


def rescale_module(delta: Any, factor: float) -> None:
    """Scale one task module's dense update dW by ``factor`` in place (LoRA: B; full: D; IA3: l - 1)."""
    with torch.no_grad():
        if hasattr(delta, "B"):
            delta.B.mul_(factor)
        elif hasattr(delta, "D"):
            delta.D.mul_(factor)
        elif hasattr(delta, "l"):
            delta.l.sub_(1.0).mul_(factor).add_(1.0)
        else:
            raise UserError(f"--save: cannot rescale a {type(delta).__name__} module")


def save_edited(model: Any, state: dict, report: dict[str, Any], path: str) -> str:
    """Write the edited model as a checkpoint (see the module docstring); returns ``path``."""
    from utils import checkpoints

    if getattr(model, "pool", None) is None or not hasattr(model.pool, "layers") or \
            hasattr(model, "composition_weights"):
        raise UserError("--save needs a second_order/ita/iel checkpoint (its composition is the uniform average)")
    n_tasks = model.pool.n_tasks
    for layer in model.pool.layers.values():
        for task, delta in enumerate(layer.deltas):
            rescale_module(delta, n_tasks * report["weights"][task])  # uniform 1/T times T w_t = w_t
    model.eval_task_weights = None
    model.compose_eval()
    edit = {k: report[k] for k in ("mode", "kept", "targets", "weights", "edited_class_il", "edited_task_il")}
    saved = dict(state, model_state=model.lean_checkpoint_state(), edit=edit)  # the record stays the training's
    checkpoints.save_checkpoint(path, saved)
    return path


def edit_title(report: dict[str, Any]) -> str:
    what = "keep" if report["mode"] == "keep" else "drop"
    return f"Module editing: {what} task(s) {', '.join(map(str, report['targets']))}"


def edit_plot_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for :func:`utils.plots.plot_edit_table`: target and control class-IL accuracy, full vs edited."""
    return [{"name": name, "full": report[f"{name}_class_il"]["full"], "edited": report[f"{name}_class_il"]["edited"]}
            for name in ("target", "control") if report[f"{name}_class_il"]["full"] is not None]


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'task':>4s} {'role':>8s} {'weight':>7s} {'full CIL':>9s} {'edited CIL':>11s} {'theta0 CIL':>11s} "
             f"{'full TIL':>9s} {'edited TIL':>11s} {'theta0 TIL':>11s}"]
    for t in range(len(report["weights"])):
        role = "target" if t in report["targets"] else "control"
        lines.append(f"{t:4d} {role:>8s} {report['weights'][t]:7.3f} {report['full_class_il'][t]:9.2f} "
                     f"{report['edited_class_il'][t]:11.2f} {report['theta0_class_il'][t]:11.2f} "
                     f"{report['full_task_il'][t]:9.2f} {report['edited_task_il'][t]:11.2f} "
                     f"{report['theta0_task_il'][t]:11.2f}")
    for name in ("target", "control"):
        acc = report[f"{name}_class_il"]
        if acc["full"] is not None:
            lines.append(f"{name} class-IL mean: full {acc['full']:.2f} -> edited {acc['edited']:.2f}")
    acc = report["mean_class_il"]
    lines.append(f"theta0 with the same heads (every module dropped): class-IL mean {acc['theta0']:.2f}; "
                 f"the modules add {acc['full'] - acc['theta0']:+.2f} points (full {acc['full']:.2f})")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.edit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of a second_order/ita/iel run")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--keep", type=parse_task_list, help="compose only these task modules (specialization)")
    group.add_argument("--drop", type=parse_task_list, help="leave these task modules out (unlearning)")
    parser.add_argument("--raw_weights", action="store_true",
                        help="weight kept modules 1/T as the reference does, not 1/|kept|")
    parser.add_argument("--out", default=None, help="also write the report to this JSON file")
    parser.add_argument("--plot", default=None, help="also write a PNG of target/control accuracy, full vs edited")
    parser.add_argument("--save", default=None, help="write the edited model as a checkpoint to this file")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    opts = parser.parse_args(argv)
    try:
        _, dataset, model, state = load_model(opts.checkpoint, opts.device)
        with torch.no_grad():
            report = evaluate_edit(model, dataset, keep=opts.keep, drop=opts.drop, raw_weights=opts.raw_weights)
        print(format_report(report), flush=True)
        if opts.out:
            from utils.io import write_json
            write_json(opts.out, report)
        if opts.plot:
            from utils.plots import plot_edit_table
            print(f"plot: {plot_edit_table(edit_plot_rows(report), opts.plot, title=edit_title(report))}")
        if opts.save:
            print(f"edited checkpoint: {save_edited(model, state, report, opts.save)}")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
