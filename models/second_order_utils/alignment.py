"""Classifier alignment of all heads on GMM samples (docs/algorithm.md §4.2), as a few large operations per step.

The procedure is the reference's: ``epochs`` epochs; each draws ``samples_per_class`` fresh samples of every seen
class's GMM, shuffles them and takes one plain-SGD step per batch of ``batch_size`` (the last incomplete batch
dropped, a set smaller than one batch used whole) on CE(z / (T (||z|| + 1e-7))), z the concatenated logits of all
heads; the learning rate follows ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch.

The steps are sequential, so what is batched is everything around them: each epoch gathers its shuffled batches
and one-hot targets in one operation, and each step is a closed-form forward and backward of the stacked
weight/bias (all heads as one (C, D) matrix) with in-place updates, without autograd or an optimizer object.
``benchmarks/alignment.py`` times it against the autograd loop; ``tests/test_alignment.py`` checks it equals that
loop to a stated tolerance.
"""
from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.pretuning import DiagonalGMM, StackedGMM, stacked_head, unstack_head
from utils import accelerator

NORM_EPS = 1e-7  # the logit normalisation's epsilon: z / (T (||z|| + NORM_EPS))


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """``CosineAnnealingLR(T_max=epochs, eta_min=0)``'s learning rate at ``epoch`` (its closed form)."""
    return lr * (1 + math.cos(math.pi * epoch / max(1, epochs))) / 2


def epoch_batches(n: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """(steps, batch) indices of a random permutation of ``range(n)`` drawn on ``device`` from its global generator;
    the last incomplete batch is dropped, a set smaller than one batch is one batch."""
    order = torch.randperm(n, device=device)
    if n < batch_size:
        return order[None]
    steps = n // batch_size
    return order[:steps * batch_size].view(steps, batch_size)


def sgd_step(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, target: torch.Tensor, lr: float,
             temperature: float) -> None:
    """One SGD step, in place, on CE(z / (T (||z|| + eps))) with z = x W^T + b; ``target`` is one-hot (B, C).

    The gradient in closed form: with s = T (||z|| + eps) and g = (softmax(z / s) - target) / B,
    dL/dz = (g - z (g . z) / ((||z|| + eps) ||z||)) / s."""
    z = torch.addmm(bias, x, weight.t())
    norm = z.norm(dim=1, keepdim=True)
    shifted = norm + NORM_EPS
    scale = shifted * temperature
    g = torch.softmax(z / scale, dim=1).sub_(target)
    dot = (g * z).sum(1, keepdim=True)
    radial = dot.div_(shifted * norm.clamp_min(torch.finfo(z.dtype).tiny))  # autograd's norm gradient: 0 at z = 0
    g_z = g.sub_(z.mul_(radial)).div_(scale)
    step = lr / x.shape[0]  # the mean over the batch
    weight.addmm_(g_z.t(), x, alpha=-step)
    bias.add_(g_z.sum(0), alpha=-step)


CHUNK_ROWS = 512  # samples scaled at once: a chunk of steps' inputs stays in the cache (benchmarks/alignment.py)
Draws = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def epoch_draws(sampler: StackedGMM, samples_per_class: int, batch_size: int, n_classes: int,
                device: torch.device, dtype: torch.dtype) -> Draws:
    """One epoch's random draws, in the order the alignment has always made them (the GMM components and normal
    noise of ``StackedGMM.sample``, then the shuffle): the noise (N, D), each sample's flat component index, the
    (steps, batch) shuffled indices and the one-hot targets (steps, batch, C)."""
    noise, rows, labels = sampler.draw(samples_per_class)
    noise, rows, labels = noise.to(device), rows.to(device), labels.to(device)
    idx = epoch_batches(len(labels), batch_size, device)
    targets = F.one_hot(labels.index_select(0, idx.reshape(-1)), n_classes).to(dtype)
    return noise, rows, idx, targets.view(*idx.shape, n_classes)


def run_now(fn: Callable[[], Draws]) -> "Future[Draws]":
    """``fn()`` called here, as a finished future (``ThreadPoolExecutor.submit``'s answer without the thread)."""
    done: Future[Draws] = Future()
    done.set_result(fn())
    return done


@torch.no_grad()
def align_stacked(weight: torch.Tensor, bias: torch.Tensor, sampler: StackedGMM, epochs: int, lr: float,
                  samples_per_class: int, batch_size: int, temperature: float = 0.1,
                  second_thread: Optional[bool] = None) -> None:
    """The alignment of a stacked ``weight`` (C, D) / ``bias`` (C,) in place (row c: class c). Random draws come
    from the global generators of the weight's device (seed them around the call).

    Each epoch draws the standard normal noise of all its samples at once (the same draws as
    ``StackedGMM.sample``) and scales and shifts only the rows of the next few steps, in shuffled order: the same
    values, bitwise, as scaling the whole epoch first and then gathering the batches, without three passes over
    an epoch of samples that does not fit in the cache. On a CPU the next epoch's draws are made in a second
    thread while this epoch's steps run (the steps draw nothing, so the generator sees the same calls in the same
    order): a free core takes the noise, about a third of the alignment's time. ``second_thread`` (default: on a
    CPU; an accelerator's draws are asynchronous already, and a second thread would use another stream) chooses."""
    device, n_classes = weight.device, weight.shape[0]
    if not sampler.classes:
        return
    flat_std, flat_means = sampler.flat_std.to(device), sampler.flat_means.to(device)
    draw = partial(epoch_draws, sampler, samples_per_class, batch_size, n_classes, device, weight.dtype)
    with ThreadPoolExecutor(max_workers=1) as pool:
        if second_thread is None:
            second_thread = not accelerator.is_accelerator(device)
        submit = pool.submit if second_thread else run_now
        pending = submit(draw)
        for epoch in range(epochs):
            noise, rows, idx, targets = pending.result()
            if epoch + 1 < epochs:
                pending = submit(draw)
            steps, batch = idx.shape
            step_lr = cosine_lr(lr, epoch, epochs)
            per_chunk = max(1, CHUNK_ROWS // batch)
            for first in range(0, steps, per_chunk):
                chunk = idx[first:first + per_chunk].reshape(-1)
                picked = rows.index_select(0, chunk)
                xs = noise.index_select(0, chunk).mul_(flat_std.index_select(0, picked))
                xs = xs.add_(flat_means.index_select(0, picked)).view(-1, batch, noise.shape[1])
                for x, target in zip(xs, targets[first:first + per_chunk]):
                    sgd_step(weight, bias, x, target, step_lr, temperature)


def align_classifier(head: IncrementalHead, gmms: dict[int, DiagonalGMM], epochs: int, lr: float,
                     samples_per_class: int, batch_size: int, temperature: float = 0.1) -> None:
    """Align all heads of ``head`` on fresh samples of ``gmms`` (classes among ``0..C-1``, its C outputs): the
    heads are stacked into one weight/bias, aligned by :func:`align_stacked` and copied back."""
    if epochs == 0 or not len(head.heads):
        return
    weight, bias = stacked_head(head)
    weight, bias = weight.detach(), bias.detach()
    sampler = StackedGMM(gmms)
    align_stacked(weight, bias, sampler, epochs, lr, samples_per_class, batch_size, temperature)
    unstack_head(head, weight, bias)
