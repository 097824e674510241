"""Prompt stores: L2P's key-matched prompt pool and CODA-Prompt's attention-weighted components."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PromptPool(nn.Module):
    """``pool_size`` prompts of ``length`` tokens, each with a key; a query picks the ``top_k``
    prompts whose keys are most cosine-similar to it (L2P)."""

    def __init__(self, pool_size: int, length: int, dim: int, top_k: int):
        super().__init__()
        if top_k > pool_size:
            raise ValueError(f"top_k {top_k} exceeds the pool size {pool_size}")
        self.top_k = top_k
        self.prompts = nn.Parameter(torch.empty(pool_size, length, dim).uniform_(-1, 1))
        self.keys = nn.Parameter(torch.empty(pool_size, dim).uniform_(-1, 1))

    def similarity(self, query: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, pool_size) between queries and keys."""
        return F.normalize(query, dim=1) @ F.normalize(self.keys, dim=1).t()

    def select(self, similarity: torch.Tensor, batchwise: bool = False) -> torch.Tensor:
        """Indices (B, top_k) of the best-matching keys; ``batchwise``: the top_k most chosen in the batch."""
        idx = similarity.topk(self.top_k, dim=1).indices
        if batchwise:
            counts = torch.bincount(idx.flatten(), minlength=similarity.shape[1])
            idx = counts.topk(self.top_k).indices.sort().values.unsqueeze(0).expand(similarity.shape[0], -1)
        return idx

    def forward(self, query: torch.Tensor, batchwise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Selected prompt tokens (B, top_k * length, D) and the pull-constraint term
        ``sum_b sum_{i in top_k(b)} cos(q_b, k_i) / B``."""
        sim = self.similarity(query)
        idx = self.select(sim, batchwise)
        prompts = self.prompts[idx].flatten(1, 2)
        pull = sim.gather(1, idx).sum() / query.shape[0]
        return prompts, pull


def gram_schmidt_rows(previous: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Rows of ``new`` made orthonormal to each other and to the rows of ``previous`` (flattened)."""
    basis = [F.normalize(r, dim=0) for r in previous.flatten(1)]
    out = []
    for row in new.flatten(1):
        start = row
        for b in basis:
            row = row - (row @ b) * b
        # more rows than dimensions: no orthogonal direction is left, keep the random one
        row = F.normalize(row if row.norm() > 1e-6 * start.norm() else start, dim=0)
        basis.append(row)
        out.append(row)
    return torch.stack(out).reshape(new.shape)


class CodaComponents(nn.Module):
    """Per prompted layer: ``pool_size`` prompt components P (length x D), keys K and attention
    vectors A (D each). A query q weighs component m by ``cos(q * A_m, K_m)``; the prompt is the
    weighted sum, split into key and value prefixes. Each task owns ``pool_size // n_tasks`` new
    components; those of earlier tasks are frozen (detached), later ones unused."""

    def __init__(self, n_layers: int, pool_size: int, length: int, dim: int, n_tasks: int):
        super().__init__()
        if pool_size < n_tasks:
            raise ValueError(f"pool_size {pool_size} must be at least the number of tasks {n_tasks}")
        if length < 2 or length % 2:
            raise ValueError(f"prompt_length {length} must be even (key and value halves)")
        self.per_task = pool_size // n_tasks
        self.P = nn.Parameter(torch.randn(n_layers, pool_size, length, dim) * 0.02)
        self.K = nn.Parameter(torch.randn(n_layers, pool_size, dim) * 0.02)
        self.A = nn.Parameter(torch.randn(n_layers, pool_size, dim) * 0.02)

    @torch.no_grad()
    def init_task(self, task: int) -> None:
        """Gram-Schmidt initialisation of the task's new components, orthogonal to the earlier ones."""
        s, e = task * self.per_task, (task + 1) * self.per_task
        for param in (self.P, self.K, self.A):
            for layer in range(param.shape[0]):
                fresh = torch.randn_like(param[layer, s:e])
                param[layer, s:e] = gram_schmidt_rows(param[layer, :s], fresh)

    def weights(self, layer: int, query: torch.Tensor, end: int, train_start: int) -> torch.Tensor:
        """alpha (B, end): ``cos(q * A_m, K_m)`` for components ``m < end`` (those before
        ``train_start`` detached)."""
        K, A = self._slice(self.K[layer], end, train_start), self._slice(self.A[layer], end, train_start)
        attended = query.unsqueeze(1) * A.unsqueeze(0)                      # (B, M, D)
        return torch.einsum("bmd,md->bm", F.normalize(attended, dim=2), F.normalize(K, dim=1))

    def forward(self, layer: int, query: torch.Tensor, end: int, train_start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value prefixes (B, length/2, D) each for ``layer``."""
        alpha = self.weights(layer, query, end, train_start)
        prompt = torch.einsum("bm,mld->bld", alpha, self._slice(self.P[layer], end, train_start))
        half = prompt.shape[1] // 2
        return prompt[:, :half], prompt[:, half:]

    @staticmethod
    def _slice(param: torch.Tensor, end: int, train_start: int) -> torch.Tensor:
        return torch.cat((param[:train_start].detach(), param[train_start:end]), dim=0)
