"""Gaussian class models of features (SEED): log-likelihoods, KL overlap between classes, experts' ensemble."""
from __future__ import annotations

import math

import torch


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean, L L^T)`` for rows x (N, D), with the Cholesky factor ``chol`` (D, D)."""
    z = torch.linalg.solve_triangular(chol, (x - mean).t(), upper=False)            # (D, N)
    half_logdet = torch.log(torch.diagonal(chol)).sum()
    return -0.5 * (z ** 2).sum(0) - half_logdet - 0.5 * x.shape[1] * math.log(2 * math.pi)


def gaussian_kl(mean0: torch.Tensor, cov0: torch.Tensor, mean1: torch.Tensor, cov1: torch.Tensor) -> torch.Tensor:
    """``KL(N0 || N1) = (tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - D + ln det S1 - ln det S0) / 2``."""
    mean0, cov0, mean1, cov1 = (t.double() for t in (mean0, cov0, mean1, cov1))
    chol1 = torch.linalg.cholesky(cov1)
    diff = (mean1 - mean0)[:, None]
    trace = torch.trace(torch.cholesky_solve(cov0, chol1))
    maha = (diff * torch.cholesky_solve(diff, chol1)).sum()
    logdet1 = 2 * torch.log(torch.diagonal(chol1)).sum()
    logdet0 = torch.linalg.slogdet(cov0)[1]
    return 0.5 * (trace + maha - mean0.numel() + logdet1 - logdet0)


def mean_pairwise_kl(stats: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean of ``KL(N_i || N_j)`` over ordered pairs of distinct classes (SEED's overlap criterion:
    a larger value means the classes overlap less in that feature space).

    Each class is factorised once (Cholesky, precision, log-determinant, in float64); a pair then costs
    O(D^2): ``tr(S_j^-1 S_i) = sum(P_j * S_i^T)``. Equals the mean of ``gaussian_kl`` over the pairs
    (tests/test_baselines_pretrained.py), n times fewer cubic factorisations than pair by pair."""
    n = len(stats)
    if n < 2:
        return 0.0
    means = torch.stack([m.double() for m, _ in stats])                                 # (n, D)
    covs = torch.stack([c.double() for _, c in stats])                                  # (n, D, D)
    chols = torch.linalg.cholesky(covs)
    precisions = torch.cholesky_inverse(chols)
    logdets = 2 * torch.log(torch.diagonal(chols, dim1=1, dim2=2)).sum(1)              # (n,)
    traces = torch.einsum("jab,iba->ij", precisions, covs)                               # tr(P_j S_i)
    diffs = means[None, :, :] - means[:, None, :]                                        # [i, j] = m_j - m_i
    mahas = (torch.einsum("ijd,jde->ije", diffs, precisions) * diffs).sum(-1)             # d_ij^T P_j d_ij
    kl = 0.5 * (traces + mahas - means.shape[1] + logdets[None, :] - logdets[:, None])  # [i, j] = KL(N_i || N_j)
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=kl.device)
    return float(kl[off_diagonal].mean())


def ensemble_log_probs(log_likelihoods: torch.Tensor, known: torch.Tensor, tau: float) -> torch.Tensor:
    """SEED's Bayesian ensemble. ``log_likelihoods`` (E, N, C): log N(f_e(x); class c of expert e);
    ``known`` (E, C): whether expert e has class c. Per expert, softmax over its known classes of
    ``log_likelihood / tau``; each class's probability is averaged over the experts that know it.
    Returns log of the averaged probabilities (N, C); classes no expert knows get -inf."""
    masked = log_likelihoods.masked_fill(~known[:, None, :], float("-inf")) / tau
    has_any = known.any(dim=1)
    probs = torch.zeros_like(masked)
    probs[has_any] = torch.softmax(masked[has_any], dim=2)
    counts = known.sum(dim=0).to(probs.dtype)                                        # (C,)
    mean = probs.sum(dim=0) / counts.clamp(min=1)
    return torch.log(mean).masked_fill(counts == 0, float("-inf"))
