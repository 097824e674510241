"""Per-phase figures of a second_order task for benchmarks/speed.py: wall time and FLOPs of the ``begin_task``
phases (feature pass, GMM fits, probe + alignment, Fisher), loader throughput, host syncs per optimizer step and
the projected time of a whole run from the per-task figures."""
from __future__ import annotations

import copy
import os
import random
import sys
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from utils import accelerator

PHASES = ("features", "gmm_fits", "probe_alignment", "fisher")
# methods of the model's TaskStatistics (models/second_order_utils/task_stats.py) -> phase
METHODS = {"extract_features": "features", "fit_gmms": "gmm_fits", "pretune": "probe_alignment",
           "compute_fisher": "fisher"}
SYNCING = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "nonzero", "__format__")
TORCH_DIR = os.path.dirname(torch.__file__)
LOADER_BATCHES = 30  # batches read to measure the loader


def _sync(device: torch.device) -> None:
    accelerator.synchronize(device)


class PhaseTimer:
    """Wraps the phase methods of the model's statistics object (on the instance) and adds their wall time per task;
    a phase called inside another (the probe's feature re-extraction) counts to the outer one."""

    def __init__(self, model: Any, device: torch.device):
        self.model, self.device = model, device
        self.seconds: dict[int, dict[str, float]] = {}
        self.task: Optional[int] = None
        self._depth = 0
        for name, phase in METHODS.items():
            setattr(model.stats, name, self._wrap(getattr(model.stats, name), phase))

    def start_task(self, task: int) -> None:
        self.task = task
        self.seconds[task] = {p: 0.0 for p in PHASES}

    def _wrap(self, original: Callable, phase: str) -> Callable:
        def timed(*args, **kwargs):
            if self._depth or self.task is None:
                return original(*args, **kwargs)
            self._depth += 1
            _sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds[self.task][phase] += time.perf_counter() - start
                self._depth -= 1
        return timed

    def remove(self) -> None:
        for name in METHODS:
            self.model.stats.__dict__.pop(name, None)


class _RngGuard:
    """Saves and restores every random stream (torch CPU/accelerator, numpy, random)."""

    def __enter__(self):
        self.state = (torch.get_rng_state(), accelerator.rng_states(),
                      np.random.get_state(), random.getstate())
        return self

    def __exit__(self, *exc):
        cpu, device, npy, py = self.state
        torch.set_rng_state(cpu)
        accelerator.set_rng_states(device)
        np.random.set_state(npy)
        random.setstate(py)


def model_copy(model: Any) -> Any:
    """A deep copy of ``model`` that shares its dataset (whose loaders may hold worker processes, which cannot be
    copied)."""
    dataset = getattr(model, "dataset", None)
    return copy.deepcopy(model, memo={} if dataset is None else {id(dataset): dataset})


def phase_flops(model: Any, dataset: Any) -> dict[str, float]:
    """FLOPs (torch.utils.flop_counter: matmuls and convolutions) of each begin_task phase, re-run after
    ``begin_task`` on a copy of the model; the run's state and random streams are left untouched."""
    from torch.utils.flop_counter import FlopCounterMode
    out: dict[str, float] = {}
    with _RngGuard():
        m = model_copy(model)
        stats = m.stats
        for name in METHODS:
            stats.__dict__.pop(name, None)  # the copy runs its own methods, not the timer's wrappers
        was_training = m.net.training
        m.net.eval()
        m.composition.use_base()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            feats, labels = stats.extract_features(dataset)
        out["features"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            stats.fit_gmms(feats, labels)
        out["gmm_fits"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            stats.pretune(dataset, feats, labels)
        out["probe_alignment"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            stats.compute_fisher(dataset)
        out["fisher"] = float(counter.get_total_flops())
        m.net.train(was_training)
        del m
    return out


def loader_images_per_s(dataset: Any, task: int = 0) -> tuple[float, int]:
    """Images/s of a fresh train loader of ``task`` (default workers, as training uses), and how many were read."""
    with _RngGuard():
        loader = dataset.make_loader(dataset.train_dataset(task), shuffle=True)
        n, start = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            n += len(batch[0])
            if i + 1 >= LOADER_BATCHES:
                break
        seconds = time.perf_counter() - start
        del loader
    return n / seconds, n


class SyncCounter:
    """Counts the Tensor calls that copy device data to the host (on a GPU: a synchronisation) made from outside
    torch, except the samplers' shuffling of CPU index tensors. Use as a context manager."""

    def __init__(self):
        self.count = 0
        self._saved: dict[str, Callable] = {}

    def __enter__(self) -> "SyncCounter":
        for name in SYNCING:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(self._saved[name]))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def _wrap(self, original: Callable) -> Callable:
        def counted(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            host_side = isinstance(frame.f_locals.get("self"), torch.utils.data.Sampler)
            if not frame.f_code.co_filename.startswith(TORCH_DIR) and not host_side:
                self.count += 1
            return original(tensor, *args, **kwargs)
        return counted


def count_host_syncs(model: Any, batch: tuple, device: torch.device, steps: int = 4) -> float:
    """Host syncs per optimizer step: those inside ``steps`` steps (``meta_observe``) plus the training loop's one
    read of the loss every ``LOG_EVERY`` steps."""
    x, y, nx = (t.to(device) for t in batch)
    model.train()
    with SyncCounter() as counter:
        for _ in range(steps):
            model.epoch_iteration = 1  # not a logging step
            model.meta_observe(x, y, nx)
    return counter.count / steps + 1.0 / model.LOG_EVERY


def projected_run_seconds(res: dict, project: Optional[dict] = None) -> float:
    """Whole-run time from the per-task figures: the begin_task phases interpolated linearly between the first
    and the last task and scaled by the training images per task, training at ``train_images_per_s`` for
    ``epochs`` epochs, evaluation of all seen tasks at ``eval_img_s``."""
    project = project or {}
    n = res["n_tasks"]
    train = project.get("train_images") or res["bench_train_images"]
    test = project.get("test_images") or res["bench_test_images"]
    epochs = project.get("epochs") or 1
    first, last = res["phase_seconds"]["task1"], res["phase_seconds"][f"task{n}"]
    scale = train / res["bench_train_images"]
    total = 0.0
    for t in range(n):
        w = t / (n - 1) if n > 1 else 0.0
        total += scale * sum((1 - w) * first[p] + w * last[p] for p in PHASES)
        total += train * epochs / res["train_images_per_s"] + (t + 1) * test / res["eval_img_s"]
    return total


# ---- run-time model of the published line: python -m benchmarks.phases --estimate h100 ----------------------

# dense peak FLOP/s (SXM parts; TF32 and bf16 on tensor cores, without sparsity) and memory bandwidth, bytes/s
GPUS = {"h100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "bytes_per_s": 3.35e12},
        "h200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "bytes_per_s": 4.8e12}}
UTILISATION = 0.40  # of the peak of the precision each phase runs in (the goal's 40 % of bf16 peak for training)
BANDWIDTH_UTILISATION = 0.70  # of the memory bandwidth, for the Fisher's memory-bound square-and-sum pass
# bytes per per-sample product element of the square-and-sum pass on a GPU, "norm" form (fisher.square_sum_form):
# the GEMM's write and one read ("inplace", the CPU's form, moves 16: write, square read+write, sum read)
SQUARE_SUM_BYTES = 8
# the fused kernel (fisher_fused.py) writes no product: it reads each sample's output gradients and inputs, fp32,
# once from memory (their re-reads by the kernel's other output tiles counted as cache hits: 2.4 MB a sample at
# ViT-B/16's qkv, against 50 MB of L2 on an H100). Like every GEMM's operand reads these overlap its products, so
# the time leaves them out; ``fisher_operand_bytes`` reports them and ``serial_total_seconds`` adds them
FUSED_BYTES_PER_VALUE = 4
# GEMMs per FLOP counted: bf16x3 runs three bf16 products for each (utils/split_precision.py)
PRODUCTS = {"fp32": ("fp32", 1), "tf32": ("tf32", 1), "bf16": ("bf16", 1), "bf16x3": ("bf16", 3)}
# the published line: --dataset seq-cifar100-224 --model_config best (models/config/ita.yaml)
PUBLISHED = {"tasks": 10, "classes_per_task": 10, "train_per_task": 5000, "test_per_task": 1000, "epochs": 20,
             "dim": 768, "depth": 12, "tokens": 197, "patches": 196, "lora_r": 16, "gmm_components": 5,
             "kmeans_inits": 50, "kmeans_iters": 30, "em_iters": 100, "probe_epochs": 3, "align_epochs": 10,
             "align_samples": 256, "image_bytes": 32 * 32 * 3}


def vit_flops(dim: int, depth: int, tokens: int, patches: int) -> dict[str, float]:
    """Matmul FLOPs per image of a ViT (2 per multiply-add): ``forward``; ``linear`` and ``attention`` of the blocks;
    ``fisher_class`` = one class backward through every block (input gradients of every block but the first
    layer's, the per-sample products of the 4 adapted layers, the attention backward at 2x its forward: what the
    reference implementation does, less its gradients below the first layer); ``fisher_direction`` = one of the
    C - 1 backward passes of ``network_fisher`` (the last block for the class token alone)."""
    linear = depth * 24 * tokens * dim ** 2  # qkv 3d^2, proj d^2, fc1 4d^2, fc2 4d^2; 2 FLOPs per MAC
    attention = depth * 4 * tokens ** 2 * dim  # q k^T and p v
    embed = 2 * patches * (3 * 16 * 16) * dim
    first_qkv = 6 * tokens * dim ** 2
    # one backward pass as network_fisher runs it (C - 1 of them for C classes): the last block for the class token
    # alone (fisher_vit.py): its qkv's per-sample product and input gradient over all tokens, a one-query attention
    # backward, and proj, fc1, fc2 on one token (their squares from one product each, their input gradients)
    block = 24 * tokens * dim ** 2
    last = 6 * tokens * dim ** 2 + (6 * tokens * dim ** 2 if depth > 1 else 0) + 8 * tokens * dim + 36 * dim ** 2
    dense = (depth - 1) * (2 * block + 2 * attention // depth) - (first_qkv if depth > 1 else 0)
    return {"forward": linear + attention + embed, "linear": linear, "attention": attention,
            "fisher_class": (linear - first_qkv) + linear + 2 * attention, "fisher_direction": dense + last}


def rate(gpu: str, precision: str) -> float:
    """FLOP/s at ``UTILISATION`` counted in fp32-equivalent FLOPs (bf16x3: a third of the bf16 rate)."""
    unit, products = PRODUCTS[precision]
    return UTILISATION * GPUS[gpu][unit] / products


def estimate(gpu: str, fisher_precision: str, train_precision: str, p: Optional[dict] = None,
             square_sum: str = "norm") -> dict[str, Any]:
    """FLOPs, loader bytes and seconds at ``UTILISATION`` of each phase of the published line on ``gpu``, with the
    Fisher's per-sample squares summed by ``square_sum`` ("norm": products written and read once; "fused": the
    products never leave the chip, the kernel reads its operands)."""
    if square_sum not in ("norm", "fused"):
        raise ValueError(f"unknown square-sum form {square_sum!r}; choose norm or fused")
    p = {**PUBLISHED, **(p or {})}
    peak = GPUS[gpu]
    v = vit_flops(p["dim"], p["depth"], p["tokens"], p["patches"])
    d, n, k = p["dim"], p["train_per_task"], p["gmm_components"]
    lora = p["depth"] * 2 * p["tokens"] * (3 * p["lora_r"] * 4 * d + p["lora_r"] * 2 * d + 2 * p["lora_r"] * 5 * d)
    train_image = v["forward"] + lora + (v["linear"] + 2 * v["attention"]) + 2 * lora  # fwd, input grads, LoRA grads
    flops = {ph: 0.0 for ph in ("fisher", "pretuning", "gmm", "training", "evaluation")}
    adapted = p["depth"] * 12 * d ** 2  # dense weight elements of the adapted layers (qkv, proj, fc1, fc2)
    square_bytes = operand_bytes = 0.0
    images = 0
    for t in range(p["tasks"]):
        seen, new = (t + 1) * p["classes_per_task"], p["classes_per_task"]
        # network_fisher's exact estimator: C - 1 backward passes for C seen classes (fisher_exact.py)
        flops["fisher"] += n * (v["forward"] + (seen - 1) * v["fisher_direction"])
        if square_sum == "fused":  # per pass and layer: the output gradients (T, O) and inputs (T, I)
            operands = p["depth"] * p["tokens"] * 16 * d  # O + I: qkv 4d, proj 2d, fc1 5d, fc2 5d
            operand_bytes += n * (seen - 1) * operands * FUSED_BYTES_PER_VALUE
        else:
            square_bytes += n * (seen - 1) * adapted * SQUARE_SUM_BYTES
        per_class = n / new
        flops["gmm"] += new * (p["kmeans_inits"] * p["kmeans_iters"] * 2 * per_class * k * d
                               + p["em_iters"] * 10 * per_class * k * d)
        align = (p["align_epochs"] + 5 * t) * p["align_samples"] * seen * 6 * d * seen
        flops["pretuning"] += n * v["forward"] + p["probe_epochs"] * n * 6 * d * new + align
        flops["training"] += p["epochs"] * n * train_image
        flops["evaluation"] += (t + 1) * p["test_per_task"] * v["forward"]
        images += n * (2 + p["epochs"]) + (t + 1) * p["test_per_task"]  # features, Fisher, epochs; evaluation
    precision = {"fisher": fisher_precision, "pretuning": train_precision, "gmm": "fp32",
                 "training": train_precision, "evaluation": train_precision}
    seconds = {ph: f / rate(gpu, precision[ph]) for ph, f in flops.items()}
    bandwidth = BANDWIDTH_UTILISATION * peak["bytes_per_s"]
    seconds["fisher"] += square_bytes / bandwidth  # a memory-bound pass of its own, not overlapped: an upper bound
    return {"gpu": gpu, "utilisation": UTILISATION, "precision": precision, "flops": flops, "seconds": seconds,
            "fisher_square_sum_bytes": square_bytes, "square_sum": square_sum, "fisher_operand_bytes": operand_bytes,
            "serial_total_seconds": sum(seconds.values()) + operand_bytes / bandwidth,
            "total_seconds": sum(seconds.values()), "loader_bytes": images * p["image_bytes"],
            "loader_images": images, "settings": p}


def print_estimate(e: dict[str, Any], label: str) -> None:
    print(f"\n{label}: {e['gpu'].upper()}, {e['utilisation']:.0%} of the peak of each phase's precision")
    print(f"{'phase':11s} {'precision':>9s} {'PFLOP':>9s} {'seconds':>9s} {'share':>6s}")
    for ph, f in e["flops"].items():
        print(f"{ph:11s} {e['precision'][ph]:>9s} {f / 1e15:9.2f} {e['seconds'][ph]:9.0f} "
              f"{e['seconds'][ph] / e['total_seconds']:6.1%}")
    print(f"{'total':11s} {'':9s} {sum(e['flops'].values()) / 1e15:9.2f} {e['total_seconds']:9.0f}   "
          f"= {e['total_seconds'] / 60:.0f} min; loader {e['loader_images'] / 1e6:.2f} M images, "
          f"{e['loader_bytes'] / 1e9:.1f} GB (32x32 uint8, device augmentation)")
    bandwidth = f"{BANDWIDTH_UTILISATION:.0%} of {GPUS[e['gpu']]['bytes_per_s'] / 1e12:.2f} TB/s"
    if e["square_sum"] == "fused":
        print(f"the Fisher's square-and-sum is fused into its per-sample products (no products in memory); its "
              f"{e['fisher_operand_bytes'] / 1e15:.2f} PB of operand reads overlap them as every GEMM's do (added "
              f"serially at {bandwidth}: {e['serial_total_seconds']:.0f} s = {e['serial_total_seconds'] / 60:.0f} min)")
    else:
        print(f"the Fisher's seconds include its square-and-sum pass ({e['square_sum']}): "
              f"{e['fisher_square_sum_bytes'] / 1e15:.2f} PB at {bandwidth}, added to the GEMM time")
    print("PFLOP in fp32-equivalent FLOPs (bf16x3: three bf16 products each, at a third of the bf16 rate)")


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="run-time model of the published ITA line (FLOPs per phase)")
    parser.add_argument("--estimate", choices=sorted(GPUS), required=True)
    parser.add_argument("--fisher_precision", choices=list(PRODUCTS), default=None,
                        help="default: the CUDA default of --fisher_precision")
    parser.add_argument("--square_sum", choices=["norm", "fused"], default=None,
                        help="the Fisher's square-and-sum: default what a CUDA run uses")
    parser.add_argument("--train_precision", choices=["fp32", "tf32", "bf16"], default=None,
                        help="default: what the CUDA default -O level runs the training forward in")
    opts = parser.parse_args(argv)
    fisher, train, form = cuda_defaults()
    print_estimate(estimate(opts.estimate, "fp32", "fp32"), "strict fp32 (-O 0 --fisher_precision fp32, "
                                                             "square-and-sum unfused)")
    chosen = opts.fisher_precision or fisher, opts.train_precision or train, opts.square_sum or form
    label = "default on CUDA" if chosen == (fisher, train, form) else "as asked"
    print_estimate(estimate(opts.estimate, chosen[0], chosen[1], square_sum=chosen[2]),
                   f"{label} (Fisher {chosen[0]}, training {chosen[1]}, square-and-sum {chosen[2]})")
    return 0


def cuda_defaults() -> tuple[str, str, str]:
    """The Fisher and training-forward precisions and the square-and-sum form a CUDA run of the published line
    gets without flags."""
    from models.second_order import SecondOrder
    from models.second_order_utils.flags import default_fisher_precision
    from utils.optimization import default_level
    level = default_level("cuda", SecondOrder.DEFAULT_LEVELS)
    train = "bf16" if level >= 2 else "tf32" if level >= 1 else "fp32"
    return default_fisher_precision("cuda"), train, cuda_square_sum_form()


def cuda_square_sum_form() -> str:
    """The Fisher's square-and-sum form on a CUDA device (``fused`` where triton is installed), as the model counts
    it: ``norm`` for every form that writes the products."""
    import torch
    from models.second_order_utils.fisher import square_sum_form
    return "fused" if square_sum_form(torch.device("cuda")) == "fused" else "norm"


if __name__ == "__main__":
    sys.exit(main())
