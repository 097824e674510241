"""The exact Fisher with C - 1 backward passes instead of C: a factor of the logits' Fisher.

For one image with class probabilities p, sum_c p_c (d log p_c / dW)^2 = diag(J^T A J) with J = dz/dW (z the
logits) and A = sum_c p_c (e_c - p)(e_c - p)^T = diag(p) - p p^T, of rank C - 1 (A 1 = 0). With A = L L^T,
L of shape (C, C - 1), the same Fisher is sum_j (J^T L[:, j])^2: C - 1 backward passes of the scores
sum_b L_b[:, j] . z_b (or . log p_b: the columns of L sum to 0). The factor: A = D^1/2 (I - q q^T) D^1/2
with D = diag(p), q = sqrt(p) a unit vector, and I - q q^T = R' R'^T for R' the columns j != k of the
Householder reflection R = I - v v^T / (1 + q_k), v = q + e_k, which maps q to -e_k (k = the most likely class,
so 1 + q_k >= 1: no cancellation). Classes whose probability is 0 for every image of the batch (fp32 underflow)
add nothing and are left out, so a batch with C' such classes needs C' - 1 backward passes.
"""
from __future__ import annotations

import torch


def logit_fisher_factor(probs: torch.Tensor) -> torch.Tensor:
    """L of shape (B, C, C - 1) with L_b L_b^T = diag(p_b) - p_b p_b^T for each row p_b of ``probs`` (B, C)
    (rows summing to 1), in ``probs``' dtype and on its device."""
    p = probs
    n, c = p.shape
    q = p.clamp_min(0).sqrt()
    k = q.argmax(1)
    v = q.clone()
    v[torch.arange(n, device=p.device), k] += 1.0
    rows = torch.eye(c, dtype=p.dtype, device=p.device).expand(n, c, c) \
        - v[:, :, None] * v[:, None, :] / (1.0 + q.gather(1, k[:, None]))[:, :, None]  # R_b
    keep = torch.arange(c - 1, device=p.device).expand(n, c - 1)
    keep = keep + (keep >= k[:, None]).long()  # the columns j != k_b
    return q[:, :, None] * rows.gather(2, keep[:, None, :].expand(n, c, c - 1))


def exact_scores(logp: torch.Tensor, probs: torch.Tensor) -> list[torch.Tensor]:
    """The C' - 1 scores sum_b L_b[:, j] . log p_b of the exact Fisher (``logp`` (B, C) the log-softmax with
    gradients, ``probs`` its exp, detached), C' the classes whose probability is non-zero somewhere in the batch.
    The gradient of a score is the same through log p as through the logits (the columns of L sum to 0: d log p /
    dz = I - 1 p^T); the factor is taken from the softmax of those classes' log-probabilities (rows summing to 1 in
    ``logp``'s dtype: the reflection has no cancellation, so fp32 keeps L L^T = A to fp32 rounding)."""
    active = (probs > 0).any(0).nonzero().flatten()
    logp = logp if len(active) == probs.shape[1] else logp[:, active]
    factor = logit_fisher_factor(torch.softmax(logp.detach(), dim=1))  # (B, C', C' - 1), on logp's device
    return [(factor[:, :, j] * logp).sum() for j in range(factor.shape[2])]
