"""Mammoth's GSS buffer (Aljundi et al., 2019, GSS-Greedy): a sample replaces a stored one with a probability that
grows with how redundant the stored one's gradient is (its score: the largest cosine similarity to gradients of
other buffer samples, plus one)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from mammoth_compat.buffer import apply_transform


class Buffer:
    """Examples and labels chosen by gradient diversity; ``model.get_grads(x, y)`` gives a flat gradient."""

    def __init__(self, buffer_size: int, device: str | torch.device, minibatch_size: int, model: Any = None):
        self.buffer_size, self.device = int(buffer_size), torch.device(device)
        self.minibatch_size, self.model = int(minibatch_size), model
        self.num_seen_examples = 0
        self.examples: Optional[torch.Tensor] = None
        self.labels: Optional[torch.Tensor] = None
        self.scores: Optional[torch.Tensor] = None
        self.cache: dict[int, torch.Tensor] = {}
        self.fathom = 0
        self.fathom_mask = torch.randperm(0)

    def __len__(self) -> int:
        return min(self.num_seen_examples, self.buffer_size)

    def reset_fathom(self) -> None:
        """Start a new sweep over the stored samples in a fresh random order (``get_data`` without ``random``)."""
        self.fathom = 0
        self.fathom_mask = torch.randperm(len(self))

    def drop_cache(self) -> None:
        self.cache = {}

    def get_grad_score(self, batch_x: torch.Tensor, batch_y: torch.Tensor,
                       X: torch.Tensor, Y: torch.Tensor, indices: Any) -> float:  # noqa: N803 - Mammoth's names
        """1 + the largest cosine similarity between the batch's gradient and those of the given buffer samples."""
        g = self.model.get_grads(batch_x, batch_y)
        grads = []
        for x, y, idx in zip(X, Y, np.asarray(indices).tolist()):
            if idx not in self.cache:
                self.cache[idx] = self.model.get_grads(x.unsqueeze(0), y.unsqueeze(0))
            grads.append(self.cache[idx])
        return float(F.cosine_similarity(g, torch.cat(grads).to(g.device), dim=1).max()) + 1

    def _slot(self, x: torch.Tensor, y: torch.Tensor, batch_score: float, big_x: Optional[torch.Tensor],
              big_y: Optional[torch.Tensor], indices: Any) -> tuple[int, float]:
        if self.num_seen_examples < self.buffer_size:
            return self.num_seen_examples, batch_score
        if batch_score < 1:
            score = self.get_grad_score(x.unsqueeze(0), y.unsqueeze(0), big_x, big_y, indices)
            s = self.scores.cpu().numpy()
            i = int(np.random.choice(self.buffer_size, p=s / s.sum()))
            if np.random.rand() < s[i] / (s[i] + score):
                return i, score
        return -1, 0.0

    def add_data(self, examples: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        if self.examples is None:
            self.examples = torch.zeros((self.buffer_size, *examples.shape[1:]), device=self.device)
            self.labels = torch.zeros(self.buffer_size, dtype=torch.int64, device=self.device)
            self.scores = torch.zeros(self.buffer_size, device=self.device)
        if self.num_seen_examples > 0:
            big_x, big_y, indices = self.get_data(min(self.minibatch_size, self.num_seen_examples), give_index=True,
                                                  random=True)
            batch_score = self.get_grad_score(examples, labels, big_x, big_y, indices)
        else:
            big_x = big_y = indices = None
            batch_score = 0.1
        for i in range(len(examples)):
            slot, score = self._slot(examples[i], labels[i], batch_score, big_x, big_y, indices)
            self.num_seen_examples += 1
            if slot >= 0:
                self.examples[slot] = examples[i].to(self.device)
                if labels is not None:
                    self.labels[slot] = labels[i].to(self.device)
                self.scores[slot] = score
                self.cache.pop(slot, None)

    def get_data(self, size: int, transform: Optional[Callable] = None, give_index: bool = False,
                 random: bool = False, device: Optional[torch.device] = None) -> tuple:
        """``size`` samples: at random, or the next ones of the current sweep (see :meth:`reset_fathom`)."""
        n = len(self)
        if random:
            choice = torch.from_numpy(np.random.choice(n, size=min(size, n), replace=False))
        else:
            if len(self.fathom_mask) != n:
                self.reset_fathom()
            choice = self.fathom_mask[self.fathom:self.fathom + size]
            self.fathom = 0 if self.fathom + len(choice) >= n else self.fathom + len(choice)
        target = torch.device(device) if device is not None else self.device
        out = (apply_transform(self.examples[choice], transform).to(target), self.labels[choice].to(target))
        return out + (choice,) if give_index else out

    def get_all_data(self, transform: Optional[Callable] = None) -> tuple:
        n = len(self)
        return apply_transform(self.examples[:n], transform).to(self.device), self.labels[:n]

    def is_empty(self) -> bool:
        return self.num_seen_examples == 0

    def empty(self) -> None:
        self.examples = self.labels = self.scores = None
        self.num_seen_examples = 0
