"""``-O 3`` against ``-O 2``: the ITA training step (bf16 autocast) with the forward compiled once, and eager, measured
side by side in one run (docs/speed.md, ``-O 3``).

The steps alternate (eager, compiled, eager, ...) on the same batch, so both see the same machine load; each task's
figures are the medians over ``--steps`` steps of forward + backward + AdamW step (no penalty: ``--alpha_ita 0``,
whose step is the same in both and not compiled). The first compiled call (the compilation) is timed on its own.
After ``--tasks`` tasks the number of compiled frames is printed (1: compiled once for the run). The statistics
passes of ``begin_task`` (features, GMMs, Fisher) are skipped: they do not change what is timed.

    python -m benchmarks.compile_step                      # ViT-B/16 at 224 px, random weights, batch 4, CPU
    python -m benchmarks.compile_step --backbone vit_tiny --img_size 32 --backend aot_eager --steps 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from app.config import parse_args  # noqa: E402
from app.experiment import build_experiment  # noqa: E402
from utils import accelerator  # noqa: E402
from utils.optimization import BF16_LEVEL, COMPILE_BACKEND_ENV, COMPILE_LEVEL  # noqa: E402


def build(opts: argparse.Namespace, base_path: str) -> tuple[Any, Any]:
    """(dataset, ITA model) at ``-O 3`` whose ``begin_task`` skips the statistics passes."""
    argv = ["--model", "ita", "--dataset", "seq-custom", "--data_path", opts.data, "--n_tasks", "10",
            "--img_size", str(opts.img_size), "--backbone", opts.backbone, "--batch_size", str(opts.batch_size),
            "--alpha_ita", "0", "-O", str(COMPILE_LEVEL), "--device", opts.device, "--base_path", base_path,
            "--checkpoint_path", os.path.join(base_path, "ckpt"), "--seed", "0", "--non_verbose", "--lr", "1e-4"]
    if opts.backbone == "vit":
        argv += ["--pretrained", "0"]  # random weights: the speed does not depend on them
    experiment = build_experiment(parse_args(argv))
    model = experiment.model
    model.stats.measure = lambda *args, **kwargs: None
    model.stats.end_task = lambda: None
    return experiment.dataset, model


def step(model: Any, batch: tuple[torch.Tensor, torch.Tensor], level: int) -> float:
    """One training step at ``-O level`` (2: eager, 3: compiled forward); its wall time in seconds."""
    model.args.code_optimization = level
    accelerator.synchronize(model.device)
    start = time.perf_counter()
    with model.autocast():
        model.group_backward([batch], 1)
    model.opt.step()
    model.opt.zero_grad(set_to_none=True)
    accelerator.synchronize(model.device)
    return time.perf_counter() - start


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/cifar100_mini.npz", help="CIFAR-100 mini npz")
    parser.add_argument("--backbone", default="vit", help="vit (ViT-B/16, random weights) or vit_tiny")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind per task")
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no C++ compiler)")
    parser.add_argument("--device", default="cpu")
    opts = parser.parse_args(argv)
    os.environ[COMPILE_BACKEND_ENV] = opts.backend
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    with tempfile.TemporaryDirectory() as base_path:
        dataset, model = build(opts, base_path)
        dataset.get_data_loaders()
        model.train()
        print(f"{opts.backbone} {opts.img_size} px, batch {opts.batch_size}, backend {opts.backend}, device "
              f"{opts.device}, load average {os.getloadavg()[0]:.2f}")
        for task in range(opts.tasks):
            if task:
                model.meta_end_task(dataset)
                dataset.get_data_loaders()
            model.meta_begin_task(dataset)
            x, y = next(iter(dataset.train_loader))[:2]
            batch = (x.to(model.device), y.to(model.device))
            first = step(model, batch, COMPILE_LEVEL)  # task 0: the compilation
            eager, compiled = [], []
            for _ in range(opts.steps):
                eager.append(step(model, batch, BF16_LEVEL))
                compiled.append(step(model, batch, COMPILE_LEVEL))
            e, c = statistics.median(eager), statistics.median(compiled)
            print(f"task {task}: first compiled step {first:.2f} s; step eager {e:.3f} s, compiled {c:.3f} s, "
                  f"speed-up (eager / compiled) {e / c:.2f}x")
        print(f"compiled frames {counters['frames']['ok']}, graph breaks {sum(counters['graph_break'].values())}, "
              f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
