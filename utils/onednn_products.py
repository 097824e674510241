"""fp32 matrix products on the CPU through oneDNN's kernels instead of torch's BLAS.

torch computes CPU ``mm``/``addmm``/``bmm`` on fp32 tensors with its BLAS (MKL in the PyPI wheels). On CPUs where
that library takes a narrow code path (MKL on AMD EPYC runs its AVX2 kernels, whatever the CPU offers) the same
fp32 products run 1.5-3x faster through oneDNN's AVX-512 kernels, which torch ships and exposes as
``torch.ops.mkldnn._linear_pointwise`` (``python -m benchmarks.cpu_products`` measures both side by side on the
Fisher pass's shapes). The arithmetic is the same: fp32 operands, fp32 accumulation, no reduced-precision math mode
(nothing is routed when ``torch.backends.mkldnn.matmul.fp32_precision`` asks for bf16 or TF32); the results differ
from the BLAS's by the order of the sums only.

* :class:`OneDnnProducts`: a ``TorchDispatchMode``; everything run under it, forward and backward, gets its fp32 CPU
  ``mm`` and ``addmm`` of at least ``MIN_FLOPS`` computed by oneDNN (``bmm`` stays with torch: a loop of oneDNN
  products is slower at the attention's shapes, and much slower with more than one thread).
* :func:`square_sums`: sum_b (g_b^T x_b)^2, the Fisher's per-sample products of a token layer, one oneDNN product
  per sample squared into the sum while it is in cache (no (B, O, I) tensor).
* :func:`attention_grads`: the attention backward per (image, head), oriented so that no (T, T) matrix is copied
  (used with one thread: with more, its small products do not share out).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
MIN_FLOPS = 1 << 22  # smaller products stay with the BLAS (a oneDNN call costs more to set up)


@functools.lru_cache(maxsize=None)
def _op_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def available() -> bool:
    """Whether fp32 products can be routed to oneDNN now: torch built with it, enabled, and its fp32 matmuls in
    full precision (``torch.backends.mkldnn.matmul.fp32_precision`` "none" or "ieee")."""
    if not (_op_available() and torch.backends.mkldnn.enabled):
        return False
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")


def linear(a: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """a @ w^T (+ bias) for fp32 CPU a (M, K), w (N, K): one oneDNN product (oneDNN makes a contiguous; w may be
    contiguous or a transposed contiguous matrix, anything else is copied first: oneDNN's kernel for a padded
    weight is a thousand times slower)."""
    if not (w.is_contiguous() or w.t().is_contiguous()):
        w = w.contiguous()
    return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")


def _routable(*tensors: torch.Tensor) -> bool:
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.dtype == torch.float32 and t.device.type == "cpu"
               and t.layout == torch.strided for t in tensors)


class OneDnnProducts(TorchDispatchMode):
    """While active, fp32 CPU ``mm`` and ``addmm`` (alpha = beta = 1) of at least ``MIN_FLOPS`` run as oneDNN
    products; ``self.routed`` counts them. Anything else runs as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.routed = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        if func is aten.mm.default and _routable(*args):
            a, b = args
            if 2 * a.shape[0] * a.shape[1] * b.shape[1] >= MIN_FLOPS:
                self.routed += 1
                return linear(a, b.t())
        elif func is aten.addmm.default and len(args) == 3 and not kwargs and _routable(*args):
            bias, a, b = args
            if 2 * a.shape[0] * a.shape[1] * b.shape[1] >= MIN_FLOPS:
                self.routed += 1
                if bias.dim() == 1 and bias.shape[0] == b.shape[1]:
                    return linear(a, b.t(), bias)
                return linear(a, b.t()).add_(bias)
        return func(*args, **kwargs)


def outside_modes() -> Any:
    """A context in which torch's ops skip the active Python dispatch modes (for loops of oneDNN calls made while
    :class:`OneDnnProducts` is active: each op would otherwise pass through Python)."""
    from torch.utils._python_dispatch import _disable_current_modes
    return _disable_current_modes()


def transposed_tokens(x: torch.Tensor) -> torch.Tensor:
    """x (B, T, I) as a contiguous (B, I, T): the left operands of :func:`square_sums`, made once per forward and
    kept for every class backward through it."""
    with outside_modes():
        return x.transpose(1, 2).contiguous()


def square_sums(g: torch.Tensor, x: torch.Tensor, x_t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_b (g_b^T x_b)^2 (O, I) in fp32 for fp32 CPU g (B, T, O), x (B, T, I): per sample one oneDNN product
    x_b^T g_b, squared into the sum. ``x_t``: :func:`transposed_tokens` of ``x`` if already made (the Fisher's class
    backwards share one forward's inputs; either orientation of the product runs at the same rate,
    ``benchmarks/cpu_products.py``)."""
    with outside_modes():
        x_t = transposed_tokens(x) if x_t is None else x_t  # (B, I, T): the products' left operands
        total = g.new_zeros(x.shape[-1], g.shape[-1])
        for xb, gb in zip(x_t.unbind(0), g.unbind(0)):
            product = linear(xb, gb.t())
            total.addcmul_(product, product)
    return total.t()


def attention_grads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: torch.Tensor, out: torch.Tensor,
                    grad: torch.Tensor, scale: float, q_t: Optional[torch.Tensor] = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of out = softmax(scale q k^T) v = p v for fp32 CPU (B, H, T, d) tensors and the kept
    probabilities p, given grad = d/d out: per (image, head) four oneDNN products, each oriented so that no
    (T, T) operand is copied (dV^T = G^T P, dP = G V^T, dS = P (dP - rowsum(G O)), dQ = s dS K, dK^T = s Q^T dS).
    ``q_t``: q^T (B, H, d, T) contiguous if already made (the class backwards share one forward's q, k and v: made
    contiguous once there, they are not copied here)."""
    with outside_modes():
        b, h, tq, d = q.shape
        n, tk = b * h, k.shape[-2]
        g, g_t = grad.contiguous(), grad.transpose(-2, -1).contiguous()
        q_t = q.transpose(-2, -1).contiguous() if q_t is None else q_t
        k, v = k.contiguous(), v.contiguous()  # (T, d) per (image, head), as products want them
        rows = (grad * out).sum(-1, keepdim=True)  # rowsum(dP * P) = rowsum(dO * O)
        dq, dk_t, dv_t = [], [], []
        for pi, gi, gti, vi, ki, qti, ri in zip(*(t.reshape(n, *t.shape[2:]).unbind(0)  # per (image, head)
                                                  for t in (p, g, g_t, v, k, q_t, rows))):
            dv_t.append(linear(gti, pi.t()))
            ds = linear(gi, vi).sub_(ri).mul_(pi)
            dq.append(linear(ds, ki.t()))
            dk_t.append(linear(qti, ds.t()))
        return (torch.stack(dq).view(b, h, tq, d).mul_(scale),
                torch.stack(dk_t).view(b, h, d, tk).mul_(scale).transpose(-2, -1),
                torch.stack(dv_t).view(b, h, d, tk).transpose(-2, -1))


def active() -> bool:
    """Whether the innermost Python dispatch modes now are :class:`OneDnnProducts` alone (another mode, e.g. a
    FLOP counter or an emulated precision, must see the products as torch's own ops)."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    stack = _get_current_dispatch_mode_stack()
    return bool(stack) and all(isinstance(mode, OneDnnProducts) for mode in stack)


def products_on(device: torch.device) -> Optional[OneDnnProducts]:
    """A :class:`OneDnnProducts` mode to enter for fp32 products on ``device``: for a CPU device where
    :func:`available`, and no other Python dispatch mode is active; else None."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    if device.type != "cpu" or not available() or _get_current_dispatch_mode_stack():
        return None
    return OneDnnProducts()
