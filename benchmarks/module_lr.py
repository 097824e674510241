"""Why a large module learning rate breaks the first task: ITA on task 0 only, one variant at a time.

    python -m benchmarks.module_lr --out benchmarks/out/module_lr -- --dataset seq-custom \
        --data_path ../shared/data/cifar100_mini.npz --n_tasks 10 --img_size 64 --normalization half \
        --backbone efficientnet_lite0 --n_epochs 1 --seed 0

Each variant trains the first task (``--stop_after 1``) with the demo's ITA settings (``app/demo.py``), then the
flags after ``--``, then its own flags (a later flag replaces an earlier one), then measures on task 0's test set: the accuracy of theta0 + tau_0 (the trained module), of theta0 with the
same heads (the module dropped) and how far the module moved the weights, ``||dW|| / ||W0||`` per adapted layer
(median and largest). A run that breaks task 0 through its features scores well with the module dropped and badly
with it; one whose heads broke scores badly both ways. Resumable: a variant with ``<out>/<variant>.json`` is skipped.
Writes ``module_lr.md`` and ``module_lr.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Optional

from benchmarks.compare import exit_code, merge_flags, parse_with_shared
from utils.errors import UserError

NO_PENALTY = ["--alpha_ita", "0", "--req_weight_cls", "0", "--simple_reg_weight_cls", "0"]
VARIANTS: dict[str, list[str]] = {
    "lr 1e-3 (demo)": [],
    "lr 1e-2": ["--lr", "0.01"],
    "lr 1e-2, no penalties": ["--lr", "0.01", *NO_PENALTY],
    "lr 1e-2, rank 4": ["--lr", "0.01", "--lora_r", "4"],
    "lr 1e-2, heads from the pre-tuned head": ["--lr", "0.01", "--init_head_from_pretuned", "1"],
    "lr 1e-2, SGD (momentum 0.9)": ["--lr", "0.01", "--optimizer", "sgd", "--optim_mom", "0.9"],
    "lr 1e-1, SGD (momentum 0.9)": ["--lr", "0.1", "--optimizer", "sgd", "--optim_mom", "0.9"],
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def measure(checkpoint: str) -> dict[str, Any]:
    """Task 0 accuracy with and without the module, and the module's relative size per layer."""
    import torch

    from app.edit import load_model
    from utils.evaluate import evaluate

    _, dataset, model, _ = load_model(checkpoint, "cpu")
    with torch.no_grad():
        model.eval_task_weights = None
        with_module = evaluate(model, dataset)[0][0]
        model.eval_task_weights = [0.0]
        without = evaluate(model, dataset)[0][0]
        model.eval_task_weights = None
        model.compose_eval()
        ratios = [float(layer.dense_delta(0).norm() / layer.w0.norm().clamp_min(1e-12))
                  for layer in model.pool.layers.values()]
    return {"task0_with_module": with_module, "task0_module_dropped": without,
            "relative_update_median": statistics.median(ratios), "relative_update_max": max(ratios),
            "layers": len(ratios)}


def module_lr(argv: Optional[list[str]] = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.module_lr", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/out/module_lr")
    parser.add_argument("--variants", default=None, help="comma-separated indices into the variant list (default all)")
    args, shared = parse_with_shared(parser, argv)
    from app.demo import ITA_ARGS
    from app.runner import run

    names = list(VARIANTS)
    if args.variants:
        try:
            names = [names[int(i)] for i in args.variants.split(",")]
        except (ValueError, IndexError):
            raise UserError(f"--variants: indices in 0..{len(VARIANTS) - 1}") from None
    found = {}
    for name in names:
        path = os.path.join(args.out, f"{slug(name)}.json")
        if os.path.isfile(path):
            with open(path) as fh:
                found[name] = json.load(fh)
            continue
        folder = os.path.join(args.out, "checkpoints", slug(name))
        print(f"[module_lr] {name}", flush=True)
        run(["--model", "ita", *merge_flags(ITA_ARGS, shared, VARIANTS[name], [
            "--stop_after", "1", "--savecheck", "task", "--checkpoint_path", folder, "--non_verbose", "1",
            "--plots", "0", "--results_file", os.path.join(args.out, "results", f"{slug(name)}.json")])])
        checkpoint = next(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".pt"))
        found[name] = {"flags": VARIANTS[name], **measure(checkpoint)}
        from utils.io import write_json
        write_json(path, found[name])
    lines = ["| variant | task 0, θ0 + τ0 | task 0, module dropped | ‖ΔW‖/‖W0‖ median | max |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['task0_with_module']:.1f} | {r['task0_module_dropped']:.1f} | "
              f"{r['relative_update_median']:.3f} | {r['relative_update_max']:.3f} |" for n, r in found.items()]
    text = "\n".join(lines) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "module_lr.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.out, "module_lr.json"), "w") as fh:
        json.dump(found, fh, indent=2)
    print(text, flush=True)
    return found


def main(argv: Optional[list[str]] = None) -> int:
    def go() -> int:
        module_lr(argv)
        return 0
    return exit_code(go)


if __name__ == "__main__":
    sys.exit(main())
