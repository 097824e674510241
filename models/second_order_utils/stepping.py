"""How ITA/IEL step: micro-batches grouped into virtual batches, and the penalty step without host
synchronisations (docs/speed.md, "host syncs").

:class:`VirtualBatches` groups ``--virtual_bs_n`` micro-batches into one optimizer step (``--vbs_mode batched``: one
forward/backward over their concatenation; ``accumulate``: one per micro-batch; the same gradient).

In the penalty step everything stays on the device: the closed-form penalty gradients of all layers are formed with
``torch._foreach_*`` ops, the per-tensor norm clip is branch-free (a scale ``min(1, c / (||g|| + 1e-6))``), the
penalty *value* (a dense reduction per layer) is computed only when ``with_value`` (logging steps) and returned as a
0-d tensor, never as a Python float.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from models.second_order_utils import penalties as pen
from models.second_order_utils.modules import ModulePool
from utils import accelerator

Pairs = list[tuple[torch.nn.Parameter, torch.Tensor]]
MicroBatch = tuple[torch.Tensor, torch.Tensor]
Loss = Union[torch.Tensor, float]


def group_size(index: int, n_batches: int, virtual_bs_n: int, tail: str, debug_mode: bool = False) -> int:
    """Micro-batches in the optimizer step that micro-batch ``index`` (of ``n_batches`` in the epoch) belongs to;
    0: skipped (a tail micro-batch under ``tail='drop'``)."""
    vbs = virtual_bs_n
    if debug_mode:  # the capped epoch may be shorter than one virtual batch: still take a step
        vbs = min(vbs, n_batches)
    full = (n_batches // vbs) * vbs
    if index < full:
        return vbs
    return 0 if tail == "drop" else n_batches - full


def group_backward(logits_fn: Callable[[torch.Tensor], torch.Tensor], micro_batches: list[MicroBatch],
                   group: int) -> torch.Tensor:
    """Backward of (1/group) sum_g mean CE(micro-batch g) over ``micro_batches`` (some or all of a step's
    ``group``) in one pass over their concatenation; returns the mean of their mean CEs (a detached 0-d
    tensor on the device)."""
    if len(micro_batches) == 1:
        inputs, labels = micro_batches[0]
        loss = F.cross_entropy(logits_fn(inputs).float(), labels)
        (loss / group).backward()
        return loss.detach()
    sizes = [len(y) for _, y in micro_batches]
    inputs = torch.cat([x for x, _ in micro_batches])
    labels = torch.cat([y for _, y in micro_batches])
    weights = torch.cat([torch.full((n,), 1.0 / (group * n), device=labels.device) for n in sizes])
    losses = F.cross_entropy(logits_fn(inputs).float(), labels, reduction="none")
    loss = (losses * weights).sum()
    loss.backward()
    return loss.detach() * (group / len(sizes))


class VirtualBatches:
    """The micro-batches of the open optimizer step: ``accumulated`` counts those whose gradient is in ``.grad``,
    ``pending`` holds those not yet run (``batched`` mode), ``group`` is the open step's size."""

    def __init__(self) -> None:
        self.accumulated = 0
        self.pending: list[MicroBatch] = []
        self.group = 1
        self.last_loss: Loss = 0.0

    def reset(self) -> None:
        self.accumulated, self.pending = 0, []

    def observe(self, inputs: torch.Tensor, labels: torch.Tensor, group: int, mode: str,
                backward: Callable[[list[MicroBatch], int], torch.Tensor], step: Callable[[], None],
                zero_grad: Callable[[], None]) -> Loss:
        """Add one micro-batch of a step of ``group``; ``step()`` once the group is complete.

        ``batched`` keeps the group's micro-batches and runs them as one large batch at the group's last one
        (``backward(micro_batches, group)``; on a CUDA out-of-memory error: one by one); until then it returns the
        previous step's loss. ``accumulate`` runs a backward per micro-batch."""
        self.group = group
        if mode == "accumulate" or group == 1:
            loss = backward([(inputs, labels)], group)
            self.accumulated += 1
            if self.accumulated == group:
                step()
                self.accumulated = 0
            return loss
        self.pending.append((inputs, labels))
        if len(self.pending) < group:
            return self.last_loss
        self.accumulated = group
        try:
            self.last_loss = backward(self.pending, group)
            fits = True
        except accelerator.OutOfMemoryError:  # too large for one pass: accumulate this group instead
            fits = False
        if not fits:  # retried here, not in the handler: the failed pass's graph and traceback are released first
            zero_grad()
            self.last_loss = torch.stack([backward([mb], group) for mb in self.pending]).mean()
        self.pending = []
        step()
        self.accumulated = 0
        return self.last_loss


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


def head_penalty_grads(head: torch.nn.Linear, target: torch.nn.Linear, fisher: tuple[torch.Tensor, torch.Tensor],
                       n: int, strength: float, l2: float) -> tuple[Pairs, torch.Tensor]:
    """Gradient of the head regulariser (Fisher-weighted pull of ``head`` to the pre-tuned ``target`` plus an L2
    term, :func:`penalties.head_regularizer`) for the head's weight and bias, and its value (detached)."""
    params = [head.weight, head.bias]
    with torch.enable_grad():
        value = pen.head_regularizer(params, [target.weight, target.bias], list(fisher), n, strength, l2)
        grads = torch.autograd.grad(value, params)
    return list(zip(params, grads)), value.detach()


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
