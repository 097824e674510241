"""``make demo``: a continual-learning run end to end on offline real data, compared with its bounds.

Runs plain fine-tuning (``sgd``, the lower bound) and ``joint`` training (the upper bound) on
the CIFAR-10 mini subset as 5 tasks x 2 classes with the small ``vit_tiny`` backbone, and
prints the accuracy tables and both final accuracies.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.errors import UserError
from utils.runner import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default="../shared/data/cifar10_mini.npz", help="npz with x_train/y_train/x_test/y_test")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="data/results/demo", help="folder of the result JSONs")
    opts = parser.parse_args(argv)
    if not os.path.isfile(opts.data):
        print(f"error: {opts.data} not found; pass --data PATH to an npz file", file=sys.stderr)
        return 2
    finals = {}
    try:
        for model in ("sgd", "joint"):
            print(f"\n=== {model} ===", flush=True)
            res = run(["--model", model, "--dataset", "seq-custom", "--data_path", opts.data, "--n_tasks", "5",
                       "--backbone", "vit_tiny", "--lr", "0.03", "--optim_mom", "0.9", "--n_epochs", str(opts.epochs),
                       "--batch_size", "32", "--seed", "0", "--non_verbose",
                       "--results_file", os.path.join(opts.out, f"{model}.json")])
            finals[model] = (res["final_class_il"], res["final_task_il"])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print("\nFinal accuracy (CIFAR-10 mini subset, 5 tasks x 2 classes, vit_tiny from scratch):")
    print(f"  {'method':10s} {'class-IL':>9s} {'task-IL':>9s}")
    for model, (cil, til) in finals.items():
        print(f"  {model:10s} {cil:9.2f} {til:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
