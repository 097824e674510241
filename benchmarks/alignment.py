"""The classifier alignment: the per-step autograd loop, the closed-form steps on a materialised epoch of samples
(before) and the closed-form steps on samples scaled a chunk at a time (models/second_order_utils/alignment.py),
timed in one run.

    python -m benchmarks.alignment [--classes 100] [--dim 1280] [--epochs 2] [--samples 256] [--batch 32]

All three run the same alignment (the same seeded draws) of a stacked head on synthetic diagonal GMMs, sized by
default as the demo's last task (100 classes, EfficientNet-Lite0's 1280 features, 256 samples per class, batch
32); ``--epochs`` keeps the autograd loop short (each epoch costs the same). The chunked steps run twice: with each
epoch's draws in line (as on an accelerator) and with the next epoch's draws made in a second thread (as on a
CPU). Prints each one's CPU seconds (the process's, which a loaded machine disturbs less) and wall seconds (the
second thread helps only the wall time, and only with a free core), steps per second, the time ratios, the
largest differences of the aligned weights (the closed-form versions: bitwise equal), and the alignment time of
a whole 10-task demo run at each one's measured (wall) speed (two alignments per task, (10 + 5t) epochs over
10(t + 1) classes; the time per step grows with the classes, so this overstates it).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from models.second_order_utils.alignment import align_stacked, cosine_lr, epoch_batches, sgd_step
from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.pretuning import DiagonalGMM, StackedGMM, stacked_head


def autograd_alignment(head: IncrementalHead, gmms: dict[int, DiagonalGMM], epochs: int, lr: float,
                       samples_per_class: int, batch_size: int, temperature: float = 0.1
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment one autograd step at a time (``torch.optim.SGD`` and ``CosineAnnealingLR`` on the stacked
    heads): the reference the closed-form steps are checked against. Returns the aligned (weight, bias)."""
    weight, bias = stacked_head(head)
    opt = torch.optim.SGD([weight, bias], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    sampler = StackedGMM(gmms)
    for _ in range(epochs):
        feats, labels = sampler.sample(samples_per_class)
        order = torch.randperm(len(feats), device=feats.device)
        batches = [order] if len(feats) < batch_size else \
            [order[i:i + batch_size] for i in range(0, len(feats) - batch_size + 1, batch_size)]
        for idx in batches:
            z = F.linear(feats[idx], weight, bias)
            z = z / (temperature * (z.norm(dim=1, keepdim=True) + 1e-7))
            loss = F.cross_entropy(z, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return weight.detach(), bias.detach()


@torch.no_grad()
def materialised_alignment(head: IncrementalHead, gmms: dict[int, DiagonalGMM], epochs: int, lr: float,
                           samples_per_class: int, batch_size: int, temperature: float = 0.1
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form steps with each epoch's samples scaled whole and then gathered into batches (the previous
    ``align_stacked``): the reference the chunked version must equal bitwise. Returns the aligned (weight, bias)."""
    weight, bias = (t.detach() for t in stacked_head(head))
    sampler = StackedGMM(gmms)
    n_classes = weight.shape[0]
    for epoch in range(epochs):
        feats, labels = sampler.sample(samples_per_class)
        idx = epoch_batches(len(labels), batch_size, weight.device)
        xs = feats.index_select(0, idx.reshape(-1)).view(*idx.shape, -1)
        targets = F.one_hot(labels.index_select(0, idx.reshape(-1)), n_classes).to(weight.dtype)
        for x, target in zip(xs, targets.view(*idx.shape, n_classes)):
            sgd_step(weight, bias, x, target, cosine_lr(lr, epoch, epochs), temperature)
    return weight, bias


def synthetic(classes: int, dim: int, seed: int = 0) -> tuple[IncrementalHead, dict[int, DiagonalGMM]]:
    """A head of ``classes // 10`` tasks (10 classes each, the rest in the last) and a 5-component GMM per class."""
    gen = torch.Generator().manual_seed(seed)
    gmms = {}
    for c in range(classes):
        w = torch.rand(5, generator=gen) + 0.1
        gmms[c] = DiagonalGMM(w / w.sum(), torch.randn(5, dim, generator=gen), torch.rand(5, dim, generator=gen) + 0.1)
    torch.manual_seed(seed)
    head = IncrementalHead(dim, classes)
    sizes = [10] * (classes // 10) + ([classes % 10] if classes % 10 else [])
    for size in sizes:
        head.add_task(size)
    return head, gmms


def demo_steps(samples: int, batch: int, tasks: int = 10, classes_per_task: int = 10) -> int:
    """SGD steps of the two alignments of a whole run: (10 + 5t) epochs of 10(t + 1) classes' samples per task."""
    return 2 * sum((10 + 5 * t) * (samples * classes_per_task * (t + 1) // batch) for t in range(tasks))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=256, help="GMM samples per class and epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    opts = parser.parse_args(argv)
    head, gmms = synthetic(opts.classes, opts.dim)
    run = dict(epochs=opts.epochs, lr=opts.lr, samples_per_class=opts.samples, batch_size=opts.batch)

    def chunked(second_thread: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        def align(head: IncrementalHead, gmms: dict[int, DiagonalGMM], **kw) -> tuple[torch.Tensor, torch.Tensor]:
            weight, bias = (t.detach() for t in stacked_head(head))
            align_stacked(weight, bias, StackedGMM(gmms), second_thread=second_thread, **kw)
            return weight, bias
        return align
    variants = {"autograd loop": autograd_alignment, "materialised epoch": materialised_alignment,
                "chunked, draws in line": chunked(False), "chunked, draws in 2nd thread": chunked(True)}
    cpu, wall, weights = {}, {}, {}
    for label, align in variants.items():
        torch.manual_seed(1)
        start, start_cpu = time.perf_counter(), time.process_time()
        weights[label] = align(head, gmms, **run)
        cpu[label], wall[label] = time.process_time() - start_cpu, time.perf_counter() - start
    steps = opts.epochs * (opts.samples * opts.classes // opts.batch)
    total = demo_steps(opts.samples, opts.batch)
    print(f"alignment of {opts.classes} classes x {opts.samples} samples, {opts.dim} features, batch {opts.batch}, "
          f"{opts.epochs} epochs ({steps} steps), {torch.get_num_threads()} thread(s) per operation; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  {'':30s} {'CPU s':>7s} {'wall s':>7s} {'steps/s':>8s} {'demo run (s)':>13s}")
    for label in variants:
        print(f"  {label:30s} {cpu[label]:7.2f} {wall[label]:7.2f} {steps / wall[label]:8.0f} "
              f"{total * wall[label] / steps:13.0f}")
    ref_w, ref_b = weights["materialised epoch"]

    def diff(label: str) -> float:
        w, b = weights[label]
        return max((w - ref_w).abs().max().item(), (b - ref_b).abs().max().item())
    base = "materialised epoch"
    print("  wall-time ratios to the materialised epoch: " + ", ".join(
        f"{label} {wall[base] / wall[label]:.2f}x" for label in variants if label != base))
    print("  CPU-time ratios to the materialised epoch: " + ", ".join(
        f"{label} {cpu[base] / cpu[label]:.2f}x" for label in variants if label != base))
    print("  largest weight/bias difference to the materialised epoch: " + ", ".join(
        f"{label} {diff(label):.2e}" for label in variants if label != base)
        + f" (weights up to {ref_w.abs().max().item():.3f}); a demo run has {total} alignment steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
