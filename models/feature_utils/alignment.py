"""Classifier alignment on sampled features (SLCA's and the second-order pre-tuning's): each epoch
draws fresh features of every seen class from stored class statistics and takes SGD steps of
cross-entropy on the classifier's logits, with a cosine learning rate stepped per epoch."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def shuffled_batches(n: int, batch_size: int, drop_last: bool = False,
                     generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
    """Index batches of a random permutation of ``range(n)`` (``generator``, or the global RNG). With ``drop_last`` the
    last incomplete batch is left out, except that a set smaller than one batch is used whole."""
    order = torch.randperm(n, generator=generator)
    if n < batch_size:
        return [order] if n else []
    stop = n - batch_size + 1 if drop_last else n
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def align_classifier(opt: torch.optim.Optimizer, logits: Callable[[torch.Tensor], torch.Tensor],
                     sample: Callable[[], tuple[torch.Tensor, torch.Tensor]], epochs: int, batch_size: int,
                     device: torch.device, drop_last: bool = False) -> None:
    """``epochs`` epochs of: ``features, labels = sample()``, then one step of ``opt`` on
    ``cross_entropy(logits(features[b]), labels[b])`` per shuffled batch ``b``; the learning rate
    follows a cosine over the epochs (``CosineAnnealingLR(T_max=epochs)``, stepped per epoch)."""
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    for _ in range(epochs):
        feats, labels = sample()
        feats, labels = feats.to(device), labels.to(device)
        for idx in shuffled_batches(len(labels), batch_size, drop_last):
            loss = F.cross_entropy(logits(feats[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
