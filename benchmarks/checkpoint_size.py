"""Serialized size of a second_order ViT-B/16 checkpoint after each of 10 tasks (seq-cifar100-224).

Builds the real timm ``vit_base_patch16_224`` (random weights, CPU, nothing downloaded) inside the
framework's ``second_order`` model, grows it to 10 tasks exactly as training does (heads, one module
per task and layer, Fisher sums, per-class GMMs) with random "trained" values, and streams
``lean_checkpoint_state()`` through ``torch.save`` into a byte counter (the bytes a checkpoint file
holds, plus its 72-byte header). After the last task the Fisher sums and GMMs are left out (nothing
reads them), so the largest checkpoint of a run is the one after task 9; it is printed too. The size the
previous format had (pretrained weights, Fisher sums and GMMs always included) is reported next to it.

    python -m benchmarks.checkpoint_size [--styles lora ia3 full] [--out FILE.json]

(``--backbone vit_tiny --embed_dim 32 --depth 1 --num_heads 2 --img_size 32`` makes a seconds-long check.)
"""
from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Any

import torch

GIB = 2 ** 30
N_TASKS, CLASSES_PER_TASK, GMM_COMPONENTS = 10, 10, 5


class ByteCounter:
    """A write-only stream that only counts."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def serialized_size(state: dict[str, Any]) -> int:
    from utils.checkpoints import FORMAT_VERSION, HEADER
    counter = ByteCounter()
    torch.save({**state, "format_version": FORMAT_VERSION}, counter)
    return counter.n + HEADER


def build_model(style: str, backbone_flags: list[str], img_size: int, n_tasks: int = N_TASKS) -> Any:
    from backbone import get_backbone
    from models import get_model_class
    from app.config import parse_args
    args = parse_args(["--model", "second_order", "--dataset", "seq-cifar100-224",
                       "--tuning_style", style, "--lr", "0.0003", "--seed", "0", "--non_verbose", *backbone_flags])
    torch.manual_seed(0)
    backbone = get_backbone(args, N_TASKS * CLASSES_PER_TASK, img_size, 3)
    dataset = SimpleNamespace(N_TASKS=n_tasks, N_CLASSES=N_TASKS * CLASSES_PER_TASK)  # what the model reads
    return get_model_class("second_order")(backbone, torch.nn.functional.cross_entropy, args, None, dataset)


def grow_one_task(model: Any, task: int) -> None:
    """What a trained task leaves in the model: head rows, task modules, Fisher sums, GMMs, counts."""
    from models.second_order_utils.pretuning import DiagonalGMM
    model.net.classifier.add_task(CLASSES_PER_TASK)
    model.pretuned_head.add_task(CLASSES_PER_TASK)
    model.pool.add_task()
    with torch.no_grad():
        for layer in model.pool.layers.values():
            for p in layer.deltas[task].parameters():
                p.normal_(0, 1e-3)
            model.fisher_past.setdefault(layer_name(model, layer), torch.zeros(layer.d_out, layer.d_in))
            model.fisher_past[layer_name(model, layer)] += torch.rand(layer.d_out, layer.d_in)
    d = model.net.feature_dim
    for c in range(task * CLASSES_PER_TASK, (task + 1) * CLASSES_PER_TASK):
        model.gmms[c] = DiagonalGMM(torch.full((GMM_COMPONENTS,), 1 / GMM_COMPONENTS),
                                    torch.randn(GMM_COMPONENTS, d), torch.rand(GMM_COMPONENTS, d))
    model.task_counts.append(5000)
    model.current_task = task + 1


def layer_name(model: Any, layer: Any) -> str:
    return next(n for n, l in model.pool.layers.items() if l is layer)


def previous_format_state(model: Any) -> dict[str, Any]:
    """The checkpoint as it was before lean checkpoints: pretrained weights included, and the Fisher sums
    and GMMs kept after the last task too (a model without a dataset cannot tell which task is the last)."""
    dataset, model.dataset = model.dataset, None
    try:
        return model.checkpoint_state()
    finally:
        model.dataset = dataset


VIT_B16 = ("--backbone", "vit", "--pretrained", "0")  # the real ViT-B/16, random weights (nothing downloaded)


def measure(style: str, backbone_flags: tuple[str, ...] = VIT_B16, img_size: int = 224,
            n_tasks: int = N_TASKS) -> dict[str, Any]:
    started = time.perf_counter()
    model = build_model(style, list(backbone_flags), img_size, n_tasks)
    pretrained = sum(t.numel() * t.element_size() for t in model.pretrained_index.tensors)
    lean, full = [], []
    for task in range(n_tasks):
        grow_one_task(model, task)
        lean.append(serialized_size(model.lean_checkpoint_state()))
        full.append(serialized_size(previous_format_state(model)))
    return {"style": style, "pretrained_bytes": pretrained, "lean_bytes_per_task": lean,
            "previous_bytes_per_task": full, "lean_gib_after_10": lean[-1] / GIB, "lean_gib_largest": max(lean) / GIB,
            "previous_gib_after_10": full[-1] / GIB, "model": model, "lean_gib_savecheck_task_total": sum(lean) / GIB,
            "previous_gib_savecheck_task_total": sum(full) / GIB, "seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=["lora", "ia3", "full"], choices=["lora", "ia3", "full"])
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--img_size", type=int, default=224)
    args, backbone_flags = parser.parse_known_args(argv)
    backbone_flags = backbone_flags or list(VIT_B16)
    rows = []
    print(f"{'style':6} {'after 10 tasks':>15} {'largest (task 9)':>17} {'before (W0, Fisher)':>20} "
          f"{'--savecheck task, 10 files':>28}")
    for style in args.styles:
        row = measure(style, tuple(backbone_flags), args.img_size)
        row.pop("model")
        rows.append(row)
        largest = row["lean_bytes_per_task"].index(max(row["lean_bytes_per_task"])) + 1
        print(f"{style:6} {row['lean_gib_after_10']:11.3f} GiB {row['lean_gib_largest']:9.3f} GiB (task {largest}) "
              f"{row['previous_gib_after_10']:15.3f} GiB "
              f"{row['lean_gib_savecheck_task_total']:17.2f} GiB (was {row['previous_gib_savecheck_task_total']:.2f})",
              flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows


if __name__ == "__main__":
    main()
