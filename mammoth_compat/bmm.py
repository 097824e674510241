"""Mammoth's ``BetaMixture1D``: a two-component beta mixture fitted by EM with weighted moment matching (used to
tell clean from noisy samples by a score in (0, 1), as in Arazo et al., 2019)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

TINY = 1e-12


class BetaMixture1D:
    """Components 0 and 1 with weights ``weight``; ``create_lookup(y)`` tabulates the posterior of component ``y``
    on a 100-point grid of (0, 1), made non-decreasing past its peak, for :meth:`look_lookup`."""

    def __init__(self, max_iters: int = 10, alphas_init: Sequence[float] = (1, 2),
                 betas_init: Sequence[float] = (2, 1), weights_init: Sequence[float] = (0.5, 0.5)):
        self.alphas = np.array(alphas_init, dtype=np.float64)
        self.betas = np.array(betas_init, dtype=np.float64)
        self.weight = np.array(weights_init, dtype=np.float64)
        self.max_iters = int(max_iters)
        self.lookup_resolution = 100
        self.lookup = np.zeros(self.lookup_resolution)
        self.lookup_loss = np.zeros(self.lookup_resolution)
        self.eps_nan = TINY

    @staticmethod
    def fit_beta_weighted(x: np.ndarray, w: np.ndarray) -> tuple[float, float]:
        """(alpha, beta) whose mean and variance equal the ``w``-weighted ones of ``x``."""
        mean = np.sum(w * x) / np.sum(w)
        var = np.sum(w * (x - mean) ** 2) / np.sum(w)
        alpha = mean * (mean * (1 - mean) / var - 1)
        return alpha, alpha * (1 - mean) / mean

    @staticmethod
    def outlier_remove(x: np.ndarray) -> tuple[np.ndarray, float, float]:
        """``x`` without values outside its 5th-95th percentiles, and those percentiles (the low one nudged up)."""
        low, high = np.percentile(x, 5), np.percentile(x, 95)
        return x[(x >= low) & (x <= high)], low + 1e-5, high

    @staticmethod
    def normalize(x: np.ndarray, x_min: float, x_max: float) -> np.ndarray:
        """``x`` scaled to [0, 1] by ``x_min``/``x_max``; values at or beyond the ends become 1e-3 and 1 - 1e-3."""
        x = (x - x_min) / (x_max - x_min + 1e-6)
        return np.where(x >= 1, 1 - 1e-3, np.where(x <= 0, 1e-3, x))

    def likelihood(self, x: np.ndarray, y: int) -> np.ndarray:
        return stats.beta.pdf(x, self.alphas[y], self.betas[y])

    def weighted_likelihood(self, x: np.ndarray, y: int) -> np.ndarray:
        return self.weight[y] * self.likelihood(x, y)

    def probability(self, x: np.ndarray) -> np.ndarray:
        return self.weighted_likelihood(x, 0) + self.weighted_likelihood(x, 1)

    def posterior(self, x: np.ndarray, y: int) -> np.ndarray:
        joint, total = self.weighted_likelihood(x, y), self.probability(x)
        out = joint / (total + self.eps_nan)
        out[np.isinf(joint) & np.isinf(total)] = 1.0
        return out

    def responsibilities(self, x: np.ndarray) -> np.ndarray:
        r = np.maximum(np.array([self.weighted_likelihood(x, i) for i in range(2)]), self.eps_nan)
        return r / r.sum(axis=0)

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        return -np.log(self.probability(x))

    def fit(self, x: np.ndarray) -> "BetaMixture1D":
        x = np.clip(np.asarray(x, dtype=np.float64), 1e-4, 1 - 1e-4)  # EM is unstable at exactly 0 or 1
        for _ in range(self.max_iters):
            r = self.responsibilities(x)
            for k in range(2):
                self.alphas[k], self.betas[k] = self.fit_beta_weighted(x, r[k])
            self.weight = r.sum(axis=1) / r.sum()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.posterior(x, 1) > 0.5

    def create_lookup(self, y: int) -> None:
        grid = np.linspace(self.eps_nan, 1 - self.eps_nan, self.lookup_resolution)
        table = self.posterior(grid, y)
        table[np.argmax(table):] = table.max()
        self.lookup, self.lookup_loss = table, grid

    def look_lookup(self, x: np.ndarray) -> np.ndarray:
        index = np.clip((self.lookup_resolution * np.asarray(x)).astype(int), 0, self.lookup_resolution - 1)
        return self.lookup[index]

    def __str__(self) -> str:
        return f"BetaMixture1D(w={self.weight}, a={self.alphas}, b={self.betas})"
