"""The ITA and IEL penalties, their closed-form gradients and the head regulariser (pure functions).

Notation (docs/algorithm.md §4.4): ``delta`` is the dense dW_t of the current task on one layer,
``past_sum`` = sum_{s<t} dW_s, ``fisher_*`` are diagonal Fisher sums with the same shape.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

EPS = 1e-5


def ita_fisher(past_fisher_sum: Optional[torch.Tensor], n_past: int, like: torch.Tensor,
               eps: float = EPS) -> torch.Tensor:
    """F_bar of ITA: (eps + sum_{s<t} F_s) / N_{<t}; just eps at task 0 (nothing seen before)."""
    if past_fisher_sum is None or n_past == 0:
        return torch.full_like(like, eps)
    return (eps + past_fisher_sum) / n_past


def iel_fisher(fisher_sum: torch.Tensor, n_total: int, eps: float = EPS) -> torch.Tensor:
    """F_tilde of IEL: eps + (sum_{s<=t} F_s) / N_{<=t} (includes the current task)."""
    return eps + fisher_sum / max(n_total, 1)


def iel_ratio(task: int) -> float:
    """r_t = 1/(t+1), except r_0 = 0.5 (a pull of strength beta/2 toward theta0 at the first task)."""
    return 0.5 if task == 0 else 1.0 / (task + 1)


def ita_penalty(delta: torch.Tensor, fisher: torch.Tensor, alpha: float) -> torch.Tensor:
    """(alpha/2) sum F_bar * dW_t^2 (Eq. 11-12 with the anchor at theta0)."""
    return 0.5 * alpha * (fisher * delta.pow(2)).sum()


def ita_penalty_grad(delta: torch.Tensor, fisher: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * fisher * delta


def iel_penalty(delta: torch.Tensor, past_sum: Optional[torch.Tensor], fisher: torch.Tensor, beta: float,
                ratio: float) -> torch.Tensor:
    """beta [ (1-r)/2 sum F dW_t^2 - r sum F dW_t (sum_{s<t} dW_s) ]."""
    value = 0.5 * (1.0 - ratio) * (fisher * delta.pow(2)).sum()
    if past_sum is not None:
        value = value - ratio * (fisher * delta * past_sum).sum()
    return beta * value


def iel_penalty_grad(delta: torch.Tensor, past_sum: Optional[torch.Tensor], fisher: torch.Tensor, beta: float,
                     ratio: float) -> torch.Tensor:
    """beta [ (1-r) F dW_t - r F sum_{s<t} dW_s ] = (beta / w_t) dOmega/d tau_t for t >= 1."""
    grad = (1.0 - ratio) * fisher * delta
    if past_sum is not None:
        grad = grad - ratio * fisher * past_sum
    return beta * grad


def head_regularizer(params: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                     fishers: Sequence[torch.Tensor], n_samples: int, lambda_fisher: float,
                     lambda_l2: float, eps: float = EPS) -> torch.Tensor:
    """lambda_F sum (eps + F_cls/N_cls) (W - W_pre)^2 + lambda_2 ||W - W_pre||^2, over weight and bias."""
    total = params[0].new_zeros(())
    for p, target, fisher in zip(params, targets, fishers):
        diff2 = (p - target.detach()).pow(2)
        total = total + lambda_fisher * ((eps + fisher / max(n_samples, 1)) * diff2).sum()
        total = total + lambda_l2 * diff2.sum()
    return total


def clip_norm(grad: torch.Tensor, max_norm: Optional[float]) -> torch.Tensor:
    """A copy of ``grad`` rescaled to norm at most ``max_norm`` (None: unchanged copy)."""
    if max_norm is None:
        return grad.clone()
    return grad * (max_norm / (grad.norm() + 1e-6)).clamp(max=1.0)  # branch-free: no host sync


def lr_factor(epoch: int, n_epochs: int) -> float:
    """The per-epoch cosine factor cos(99 pi e / (200 (K-1))); 1 when K = 1."""
    import math
    if n_epochs <= 1:
        return 1.0
    return math.cos(99.0 * math.pi * epoch / (200.0 * (n_epochs - 1)))
