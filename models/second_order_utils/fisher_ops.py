"""Backward passes made cheap for the Fisher's many class backwards through one forward.

The exact Fisher backpropagates one class after another through the same forward, so anything a backward
recomputes from the saved inputs is recomputed once per class. :class:`ReusedBackward` is a torch-function mode,
active during the Fisher's forward, that swaps two such operations for versions that do that work once, in the
forward:

* ``gelu`` (exact) and ``silu``: the slope f'(x) is computed in the forward and kept; each backward is one multiply
  (instead of erf/exp of x per class);
* ``scaled_dot_product_attention`` without mask, dropout or causal masking: the forward keeps the attention
  probabilities P and its output O; each backward is four matrix products (dV = P^T dO, dP = dO V^T,
  dS = P (dP - rowsum(dO O)), dQ = s dS K, dK = s dS^T Q) instead of the fused kernel's five, which recompute P.

The gradients equal autograd's up to fp32 rounding (tests/test_fisher_ops.py). Calls it does not cover run as they
are.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from utils import onednn_products


class _KnownSlope(torch.autograd.Function):
    """y = f(x) with f'(x) given: the backward is grad * slope."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (slope,) = ctx.saved_tensors
        return grad * slope, None, None


def gelu_with_slope(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        cdf = 0.5 * (1.0 + torch.erf(x * (1.0 / math.sqrt(2.0))))
        y = x * cdf
        slope = cdf + x * torch.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return _KnownSlope.apply(x, y, slope)


def silu_with_slope(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        s = torch.sigmoid(x)
        y = x * s
        slope = s * (1.0 + x * (1.0 - s))
    return _KnownSlope.apply(x, y, slope)


ONEDNN_MIN_QUERIES = 16  # fewer query rows (a class-token-only block): the batched products below


def _onednn_backward(q: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether the attention backward runs as :func:`onednn_products.attention_grads`: fp32 CPU (B, H, T, d) tensors
    with many queries, one thread, and the Fisher's oneDNN products active."""
    return q.dim() == 4 and q.shape[-2] >= ONEDNN_MIN_QUERIES and torch.get_num_threads() == 1 \
        and onednn_products.active() \
        and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (q, *others))


class _AttentionKeptProbs(torch.autograd.Function):
    """softmax(s q k^T) v, keeping the probabilities for the backward (and, where the backward runs through oneDNN,
    q^T, k and v contiguous: made once here instead of once per class backward)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        p = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
        out = p @ v
        ctx.q_t = None
        if _onednn_backward(q, k, v):
            with onednn_products.outside_modes():
                ctx.q_t, k, v = q.transpose(-2, -1).contiguous(), k.contiguous(), v.contiguous()
        ctx.save_for_backward(q, k, v, p, out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        q, k, v, p, out = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        if _onednn_backward(q, k, v, grad):
            dq, dk, dv = onednn_products.attention_grads(q, k, v, p, out, grad, ctx.scale, ctx.q_t)
            return dq if need_q else None, dk if need_k else None, dv if need_v else None, None
        dv = p.transpose(-2, -1) @ grad if need_v else None
        dq = dk = None
        if need_q or need_k:
            dp = grad @ v.transpose(-2, -1)
            # rowsum(dP * P) = rowsum(dO * O) (O = P V): a (T, d) product instead of a (T, T) one
            ds = dp.sub_((grad * out).sum(-1, keepdim=True)).mul_(p)
            dq = (ds @ k) * ctx.scale if need_q else None
            dk = (ds.transpose(-2, -1) @ q) * ctx.scale if need_k else None
        return dq, dk, dv, None


def attention_kept_probs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         scale: Optional[float] = None) -> torch.Tensor:
    return _AttentionKeptProbs.apply(q, k, v, 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)


class ReusedBackward(TorchFunctionMode):
    """While active, exact ``gelu``, ``silu`` and plain ``scaled_dot_product_attention`` on fp32 tensors that need
    gradients run as the versions above; ``self.swapped`` counts the calls replaced."""

    def __init__(self) -> None:
        super().__init__()
        self.swapped = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.requires_grad and x.dtype == torch.float32 \
                and torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            if func is F.gelu and kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "none":
                self.swapped += 1
                return gelu_with_slope(x)
            if func is F.silu and not kwargs.get("inplace", False):
                self.swapped += 1
                return silu_with_slope(x)
            if func is F.scaled_dot_product_attention and len(args) == 3 and kwargs.get("attn_mask") is None \
                    and not kwargs.get("dropout_p") and not kwargs.get("is_causal") \
                    and not kwargs.get("enable_gqa") and args[1].shape[-2] == args[2].shape[-2]:
                self.swapped += 1
                return attention_kept_probs(*args, scale=kwargs.get("scale"))
        return func(*args, **kwargs)
