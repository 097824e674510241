"""Task pre-consolidation on frozen theta0 features: per-class diagonal GMMs (fitted in gmm.py, sampled here), a
linear probe of the new head; the classifier alignment of all heads on GMM samples is in alignment.py
(docs/algorithm.md §4.2)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from models.feature_utils.alignment import shuffled_batches
from models.second_order_utils.heads import IncrementalHead

LOG_2PI = math.log(2 * math.pi)


@dataclass
class DiagonalGMM:
    """A Gaussian mixture with diagonal covariances: ``weights`` (K,), ``means`` and ``variances`` (K, D), on the
    model's device (fitted there by gmm.py, sampled there by :class:`StackedGMM`)."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor

    def state(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "variances": self.variances}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "DiagonalGMM":
        return cls(state["weights"].float(), state["means"].float(), state["variances"].float())


def _batches(n: int, batch_size: int, generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
    """Shuffled index batches with drop_last; a set smaller than one batch is used whole."""
    return shuffled_batches(n, batch_size, drop_last=True, generator=generator)


def stacked_head(head: IncrementalHead, first_task: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Leaf copies of the concatenated weight (C, D) and bias (C,) of heads ``first_task..`` (trainable)."""
    heads = list(head.heads)[first_task:]
    weight = torch.cat([h.weight.detach() for h in heads]).clone().requires_grad_(True)
    bias = torch.cat([h.bias.detach() for h in heads]).clone().requires_grad_(True)
    return weight, bias


def unstack_head(head: IncrementalHead, weight: torch.Tensor, bias: torch.Tensor, first_task: int = 0) -> None:
    """Copy a stacked weight/bias back into the per-task heads ``first_task..``."""
    row = 0
    with torch.no_grad():
        for h in list(head.heads)[first_task:]:
            h.weight.copy_(weight[row:row + h.out_features])
            h.bias.copy_(bias[row:row + h.out_features])
            row += h.out_features


def linear_probe(head: IncrementalHead, epoch_features: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 n_past: int, epochs: int, lr: float, batch_size: int) -> None:
    """SGD on the new head with past-class logits at -inf, i.e. cross-entropy over the new classes only
    (the old heads get zero gradient, so only the new head is optimised).

    ``epoch_features()`` re-extracts (features, labels) of the current task for every epoch.
    """
    if epochs == 0 or not len(head.heads):
        return
    last = len(head.heads) - 1
    weight, bias = stacked_head(head, last)
    opt = torch.optim.SGD([weight, bias], lr=lr)
    for _ in range(epochs):
        feats, labels = epoch_features()
        labels = labels - n_past
        for idx in _batches(len(feats), batch_size):
            loss = F.cross_entropy(F.linear(feats[idx], weight, bias), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    unstack_head(head, weight, bias, last)


class StackedGMM:
    """The GMMs of several classes with their parameters stacked ((C, K) weights, (C, K, D) means and
    variances; classes with fewer components are padded with zero-weight ones) for one-call sampling."""

    def __init__(self, gmms: dict[int, DiagonalGMM], classes: Optional[list[int]] = None):
        self.classes = sorted(gmms) if classes is None else list(classes)
        if not self.classes:
            self.weights = torch.zeros(0, 1)
            return
        k = max(len(gmms[c].weights) for c in self.classes)
        d = gmms[self.classes[0]].means.shape[1]
        device = gmms[self.classes[0]].means.device  # samples are drawn where the GMMs live (the model's device)
        self.weights = torch.zeros(len(self.classes), k, device=device)
        self.means = torch.zeros(len(self.classes), k, d, device=device)
        self.std = torch.ones(len(self.classes), k, d, device=device)
        for i, c in enumerate(self.classes):
            g = gmms[c]
            n = len(g.weights)
            self.weights[i, :n], self.means[i, :n], self.std[i, :n] = g.weights, g.means, g.variances.sqrt()

    def draw(self, per_class: int, generator: Optional[torch.Generator] = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random part of :meth:`sample` (the same draws, in the same order): standard normal ``noise``
        (C * per_class, D), the flat component index of each row in ``flat_std``/``flat_means``, and the labels;
        sample i is ``noise[i] * flat_std[rows[i]] + flat_means[rows[i]]``."""
        n_cls, d = len(self.classes), self.means.shape[2]
        device = self.weights.device
        comp = torch.multinomial(self.weights, per_class, replacement=True, generator=generator)  # (C, n)
        rows = (torch.arange(n_cls, device=device)[:, None] * self.means.shape[1] + comp).reshape(-1)
        noise = torch.randn(n_cls, per_class, d, generator=generator, device=device).reshape(n_cls * per_class, d)
        labels = torch.tensor(self.classes, dtype=torch.long, device=device).repeat_interleave(per_class)
        return noise, rows, labels

    @property
    def flat_std(self) -> torch.Tensor:
        return self.std.reshape(-1, self.std.shape[2])

    @property
    def flat_means(self) -> torch.Tensor:
        return self.means.reshape(-1, self.means.shape[2])

    def sample(self, per_class: int, generator: Optional[torch.Generator] = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``per_class`` samples of every class, grouped by class, and their labels."""
        if not self.classes:
            return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
        noise, rows, labels = self.draw(per_class, generator)
        # in place, with index_select: bitwise the values of means[c, k] + noise * std[c, k], 1.5x faster
        # (benchmarks/feature_stats.py)
        feats = noise.mul_(self.flat_std.index_select(0, rows)).add_(self.flat_means.index_select(0, rows))
        return feats, labels


def sample_features(gmms: dict[int, DiagonalGMM], per_class: int,
                    classes: Optional[list[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` synthetic features of each class (all of ``gmms`` by default) and their labels."""
    return StackedGMM(gmms, classes).sample(per_class)
