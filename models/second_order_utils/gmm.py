"""Per-class diagonal GMMs fitted in torch on the features' device (fp32): k-means initialisation (best of
``kmeans_inits`` seeded Lloyd runs on globally min-max normalised data, as the reference does), then EM with
scikit-learn's updates and stopping rule, all classes of a task in one batched EM. Under DDP the classes are split
across the ranks and the fits summed (a broadcast from each class's owner) so every rank holds the same GMMs.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from models.second_order_utils.pretuning import LOG_2PI, DiagonalGMM


def kmeans_labels(x: torch.Tensor, k: int, n_init: int, seed: int, tol: float = 1e-3,
                  max_iter: int = 300) -> torch.Tensor:
    """Best of ``n_init`` Lloyd runs (random data points as seeds, drawn on ``x``'s device), run in one batch."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    seeds = torch.stack([torch.randperm(len(x), generator=gen, device=x.device)[:k] for _ in range(n_init)])
    centres = x[seeds]  # (S, K, D)
    for _ in range(max_iter):
        labels = torch.cdist(x[None].expand(n_init, -1, -1), centres).argmin(-1)  # (S, N)
        onehot = F.one_hot(labels, k).to(x.dtype)  # (S, N, K)
        counts = onehot.sum(1)  # (S, K)
        new = (onehot.transpose(1, 2) @ x) / counts.clamp(min=1)[..., None]
        new = torch.where(counts[..., None] > 0, new, centres)  # an empty cluster keeps its centre
        shift = (new - centres).norm(dim=-1).max()
        centres = new
        if shift < tol:
            break
    dist = torch.cdist(x[None].expand(n_init, -1, -1), centres)
    labels = dist.argmin(-1)
    inertia = dist.min(-1).values.pow(2).sum(-1)
    return labels[inertia.argmin()]


def kmeans_init(x: torch.Tensor, k: int, n_init: int, seed: int, reg_covar: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Initial (weights, means, variances) of the non-empty k-means clusters of ``x`` (unnormalised moments)."""
    span = x.max() - x.min()
    normalised = (x - x.min()) / torch.where(span > 0, span, torch.ones_like(span))
    labels = kmeans_labels(normalised, k, n_init, seed)
    onehot = F.one_hot(labels, k).to(x.dtype)  # (N, K)
    counts = onehot.sum(0)
    means = onehot.t() @ x / counts.clamp(min=1)[:, None]
    variances = onehot.t() @ (x - means[labels]).pow(2) / counts.clamp(min=1)[:, None]  # population variance
    present = counts > 0
    return counts[present] / counts.sum(), means[present], variances[present] + reg_covar


def batched_em(x: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor, means: torch.Tensor,
               variances: torch.Tensor, comps: torch.Tensor, max_iter: int = 500, tol: float = 1e-3,
               reg_covar: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """EM of C diagonal GMMs at once: ``x`` (C, N, D) padded samples with ``rows`` (C, N) marking the real ones,
    parameters (C, K) / (C, K, D) with ``comps`` (C, K) marking the real components. Each class stops when its
    mean log-likelihood changes by less than ``tol`` (scikit-learn's rule: the likelihood of the parameters before
    the last M-step); one host sync per iteration for all classes."""
    eps = 10 * torch.finfo(x.dtype).eps
    n = rows.sum(1).to(x.dtype)  # (C,)
    lower = torch.full_like(n, float("-inf"))
    active = torch.ones_like(n, dtype=torch.bool)
    for _ in range(max_iter):
        diff2 = (x[:, :, None, :] - means[:, None]).pow(2) / variances[:, None]  # (C, N, K, D)
        log_prob = -0.5 * (diff2.sum(-1) + torch.log(variances).sum(-1)[:, None] + x.shape[-1] * LOG_2PI)
        log_prob = log_prob + torch.log(weights)[:, None]
        log_prob = log_prob.masked_fill(~comps[:, None, :], float("-inf"))
        log_norm = torch.logsumexp(log_prob, dim=2)  # (C, N)
        resp = torch.exp(log_prob - log_norm[..., None]) * rows[..., None]  # (C, N, K)
        nk = resp.sum(1) + eps  # (C, K)
        new_means = resp.transpose(1, 2) @ x / nk[..., None]
        new_vars = torch.einsum("cnk,cnkd->ckd", resp, (x[:, :, None, :] - new_means[:, None]).pow(2)) \
            / nk[..., None] + reg_covar
        new_weights = torch.where(comps, nk / n[:, None], torch.zeros_like(nk))
        bound = (log_norm * rows).sum(1) / n
        keep = active[:, None]
        weights = torch.where(keep, new_weights, weights)
        means = torch.where(keep[..., None], new_means, means)
        variances = torch.where(keep[..., None], new_vars, variances)
        active = active & ((bound - lower).abs() >= tol)
        lower = bound
        if not bool(active.any()):
            break
    return weights, means, variances


def fit_class_gmms(feats: torch.Tensor, labels: torch.Tensor, classes: list[int], seed: int,
                   n_components: int = 5, kmeans_inits: int = 50, max_iter: int = 500, tol: float = 1e-3,
                   reg_covar: float = 1e-6, owned: Optional[list[int]] = None,
                   seeds: Optional[dict[int, int]] = None) -> dict[int, DiagonalGMM]:
    """A diagonal GMM per class of ``classes`` (k-means seed ``seed * 1000 + c`` for class c unless ``seeds``
    says otherwise) on ``feats``' device. ``owned``: the classes this process fits (default: all)."""
    owned = classes if owned is None else owned
    x_all = feats.float()
    per_class = {c: x_all[labels == c] for c in classes}
    fitted = [c for c in owned if len(per_class[c])]
    k = n_components
    d = x_all.shape[1]
    longest = max([len(per_class[c]) for c in fitted], default=1)
    C = len(fitted)
    x = x_all.new_zeros(C, longest, d)
    rows = torch.zeros(C, longest, dtype=torch.bool, device=x_all.device)
    weights = x_all.new_zeros(C, k)
    means = x_all.new_zeros(C, k, d)
    variances = x_all.new_ones(C, k, d)
    comps = torch.zeros(C, k, dtype=torch.bool, device=x_all.device)
    for i, c in enumerate(fitted):
        rows_c = per_class[c]
        x[i, :len(rows_c)], rows[i, :len(rows_c)] = rows_c, True
        class_seed = seeds[c] if seeds is not None else seed * 1000 + c
        w, m, v = kmeans_init(rows_c, max(1, min(k, len(rows_c))), kmeans_inits, class_seed, reg_covar)
        j = len(w)
        weights[i, :j], means[i, :j], variances[i, :j], comps[i, :j] = w, m, v, True
    if C:
        weights, means, variances = batched_em(x, rows, weights, means, variances, comps, max_iter, tol, reg_covar)
    return {c: DiagonalGMM(weights[i][comps[i]], means[i][comps[i]], variances[i][comps[i]])
            for i, c in enumerate(fitted)}


def fit_gmms_distributed(feats: torch.Tensor, labels: torch.Tensor, classes: list[int], seed: int,
                         **kwargs) -> dict[int, DiagonalGMM]:
    """:func:`fit_class_gmms` with the classes split round-robin over the DDP ranks and the fits shared: each
    class's owner contributes its parameters, the others zeros, and one sum over ranks gives every rank all fits."""
    from utils import distributed
    world, rank = distributed.world_size(), distributed.rank()
    present = [c for c in classes if bool((labels == c).any())]
    if world == 1:
        return fit_class_gmms(feats, labels, present, seed, **kwargs)
    owned = [c for i, c in enumerate(present) if i % world == rank]
    local = fit_class_gmms(feats, labels, present, seed, owned=owned, **kwargs)
    k, d = kwargs.get("n_components", 5), feats.shape[1]
    packed = feats.new_zeros(len(present), k, 2 * d + 2)  # [weight, is-component, means, variances]
    for i, c in enumerate(present):
        if c in local:
            g, j = local[c], len(local[c].weights)
            packed[i, :j, 0], packed[i, :j, 1] = g.weights, 1.0
            packed[i, :j, 2:2 + d], packed[i, :j, 2 + d:] = g.means, g.variances
    distributed.all_reduce_sum(packed)
    out = {}
    for i, c in enumerate(present):
        real = packed[i, :, 1] > 0.5
        out[c] = DiagonalGMM(packed[i, real, 0], packed[i, real, 2:2 + d], packed[i, real, 2 + d:])
    return out


def fit_gmm(features, n_components: int = 5, seed: int = 0, kmeans_inits: int = 50, max_iter: int = 500,
            tol: float = 1e-3, reg_covar: float = 1e-6) -> DiagonalGMM:
    """One diagonal GMM on ``features`` (N, D) (a tensor, on its device, or an array): :func:`fit_class_gmms` of a
    single class with seed ``seed``."""
    x = torch.as_tensor(features).float()
    return fit_class_gmms(x, torch.zeros(len(x), dtype=torch.long, device=x.device), [0], seed, n_components,
                          kmeans_inits, max_iter, tol, reg_covar, seeds={0: seed})[0]
