"""The penalty step of ITA/IEL without host synchronisations (docs/speed.md, "host syncs").

Everything here stays on the device: the closed-form penalty gradients of all layers are formed with
``torch._foreach_*`` ops, the per-tensor norm clip is branch-free (a scale ``min(1, c / (||g|| + 1e-6))``), the
penalty *value* (a dense reduction per layer) is computed only when ``with_value`` (logging steps) and returned as a
0-d tensor, never as a Python float.
"""
from __future__ import annotations

from typing import Optional

import torch

from models.second_order_utils import penalties as pen
from models.second_order_utils.modules import ModulePool

Pairs = list[tuple[torch.nn.Parameter, torch.Tensor]]


def clip_per_tensor_(grads: list[torch.Tensor], max_norm: Optional[float]) -> list[torch.Tensor]:
    """Rescale each tensor in place to norm at most ``max_norm`` (None: unchanged), with no data-dependent branch."""
    if max_norm is None or not grads:
        return grads
    scales = torch._foreach_add(torch._foreach_norm(grads), 1e-6)
    torch._foreach_reciprocal_(scales)
    torch._foreach_mul_(scales, float(max_norm))
    torch._foreach_clamp_max_(scales, 1.0)
    torch._foreach_mul_(grads, scales)
    return grads


def adapter_penalty_grads(pool: ModulePool, task: int, fisher: dict[str, torch.Tensor], use_iel: bool,
                          strength: float, past_sums: dict[str, Optional[torch.Tensor]],
                          with_value: bool = False) -> tuple[Pairs, Optional[torch.Tensor]]:
    """Penalty gradient of every parameter of the current task's modules (fresh tensors) and, with
    ``with_value``, the penalty itself (ITA: Eq. 11-12; IEL: Eq. 18-19; see :mod:`penalties`)."""
    names = list(pool.layers)
    with torch.no_grad():
        deltas = [pool.layers[n].deltas[task].delta(pool.layers[n].w0) for n in names]
        fishers = [fisher[n] for n in names]
        dense = torch._foreach_mul(fishers, deltas)  # F * dW_t
        value = None
        if use_iel:
            ratio = pen.iel_ratio(task)
            torch._foreach_mul_(dense, strength * (1.0 - ratio))
            with_past = [i for i, n in enumerate(names) if past_sums.get(n) is not None]
            if with_past:
                pulls = torch._foreach_mul([fishers[i] for i in with_past], [past_sums[names[i]] for i in with_past])
                torch._foreach_add_([dense[i] for i in with_past], pulls, alpha=-strength * ratio)
            if with_value:
                value = torch.stack([pen.iel_penalty(d, past_sums.get(n), f, strength, ratio)
                                     for n, d, f in zip(names, deltas, fishers)]).sum()
        else:
            torch._foreach_mul_(dense, strength)  # alpha F dW
            if with_value:  # (alpha/2) sum F dW^2 = 1/2 sum grad * dW
                value = 0.5 * torch.stack([(g * d).sum() for g, d in zip(dense, deltas)]).sum()
        pairs: Pairs = []
        for n, grad in zip(names, dense):
            module = pool.layers[n].deltas[task]
            pairs.extend(zip(module.parameters(), module.grads_from_dense(grad, pool.layers[n].w0)))
    return pairs, value


def apply_penalty_(pairs: Pairs, max_norm: Optional[float], decoupled: bool, lr_scale: float) -> None:
    """Clip each penalty gradient, then ``p -= lr_scale * g`` (decoupled) or ``p.grad += g`` (coupled)."""
    if not pairs:
        return
    params = [p for p, _ in pairs]
    grads = clip_per_tensor_([g for _, g in pairs], max_norm)
    with torch.no_grad():
        if decoupled:
            torch._foreach_add_(params, grads, alpha=-lr_scale)
            return
        present = [i for i, p in enumerate(params) if p.grad is not None]
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g
        if present:
            torch._foreach_add_([params[i].grad for i in present], [grads[i] for i in present])
