"""fp32 matrix products from bf16 tensor-core products: the "bf16x3" split.

Each fp32 operand is split into two bf16 parts, ``hi = bf16(x)`` and ``lo = bf16(x - hi)`` (together 16 of fp32's 24
mantissa bits), and a @ b is computed as ``hi_a @ hi_b + hi_a @ lo_b + lo_a @ hi_b`` with every product of two bf16
values exact in fp32 and the sums in fp32. What it leaves out, ``lo_a @ lo_b`` and the rounding of the residuals,
is about 2^-17 of each product term, against TF32's 2^-11: close to fp32, at the bf16 rate of the tensor cores (an
H100 SXM: 989 dense bf16 TFLOP/s, so three products in the time fp32 takes for a fifth of one).

The three products are ONE GEMM over a three times longer inner dimension, ``[hi_a, hi_a, lo_a] @ [hi_b; lo_b;
hi_b]``, with bf16 operands and an fp32 result (``torch.mm(..., out_dtype=torch.float32)``), so the result is
written once. Where torch has no such kernel (the CPU, whose bf16 GEMMs round their results to bf16), an exact one
is registered: the bf16 operands widened to fp32 and multiplied in fp32, which gives the same exact products and
fp32 sums, in another order.

:class:`Bf16x3` is a ``TorchDispatchMode``: everything run under it, forward and backward, gets its ``mm``,
``bmm``, ``addmm`` and ``baddbmm`` on fp32 operands computed this way (bias and accumulator terms added in fp32).
Convolutions and fused attention kernels run as they are (no bf16-in, fp32-out kernel exists for them). Where
Triton kernels run (``accelerator.fused_kernels_available``: CUDA), the products are one kernel that splits its fp32
tiles in registers (``split_precision_triton.py``), which saves the split's memory passes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from utils import accelerator

aten = torch.ops.aten
_FILLED: list[torch.library.Library] = []  # keeps the registrations alive


def split_bf16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) in bf16 with hi + lo = x to about 2^-17 relative."""
    hi = x.to(torch.bfloat16)
    return hi, (x - hi.to(x.dtype)).to(torch.bfloat16)


def _widened(op: Any) -> Any:
    def product(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        return op(a.to(out_dtype), b.to(out_dtype))
    return product


def ensure_fp32_out_gemm() -> None:
    """Register the exact fp32-result kernels of ``mm.dtype`` / ``bmm.dtype`` for the CPU where torch has none
    (the suite's test accelerator computes on CPU tensors, so it uses them too). Idempotent."""
    if _FILLED:
        return
    lib = torch.library.Library("aten", "IMPL")
    for name, op in (("mm.dtype", aten.mm.default), ("bmm.dtype", aten.bmm.default)):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{name}", "CPU"):
            lib.impl(name, _widened(op), "CPU")
    _FILLED.append(lib)


def bf16x3_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for fp32 (M, K) @ (K, N) or batched (B, M, K) @ (B, K, N), as one bf16 GEMM with an fp32 result."""
    ensure_fp32_out_gemm()
    a_hi, a_lo = split_bf16(a)
    b_hi, b_lo = split_bf16(b)
    wide_a = torch.cat([a_hi, a_hi, a_lo], dim=-1)
    wide_b = torch.cat([b_hi, b_lo, b_hi], dim=-2)
    op = aten.bmm.dtype if a.dim() == 3 else aten.mm.dtype
    return op(wide_a, wide_b, torch.float32)


def _scaled(product: torch.Tensor, acc: torch.Tensor, beta: Any, alpha: Any) -> torch.Tensor:
    out = product if alpha == 1 else product * alpha
    if beta == 0:
        return out
    return out + (acc if beta == 1 else acc * beta)


KERNELS = ("auto", "triton", "torch")


class Bf16x3(TorchDispatchMode):
    """While active, ``mm``/``bmm``/``addmm``/``baddbmm`` on fp32 operands are computed as bf16x3 products:
    ``kernel`` "torch" (:func:`bf16x3_mm`), "triton" (the fused kernel; on a CPU only in Triton's interpreter) or
    "auto" (Triton where :func:`accelerator.fused_kernels_available`, else torch)."""

    def __init__(self, kernel: str = "auto") -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"unknown bf16x3 kernel {kernel!r}; choose from {', '.join(KERNELS)}")
        self.kernel = kernel
        self.calls = 0  # products computed split so far

    def product(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.kernel == "triton" or (self.kernel == "auto" and accelerator.fused_kernels_available(a.device)):
            from utils.split_precision_triton import bf16x3_mm_triton
            return bf16x3_mm_triton(a, b)
        return bf16x3_mm(a, b)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten.mm.default, aten.bmm.default) and not kwargs and _fp32(args[0], args[1]):
            return self.product(args[0], args[1])
        if func in (aten.addmm.default, aten.baddbmm.default) and _fp32(args[1], args[2]):
            acc, a, b = args[:3]
            return _scaled(self.product(a, b), acc, kwargs.get("beta", 1), kwargs.get("alpha", 1))
        return func(*args, **kwargs)


def _fp32(a: Any, b: Any) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
            and a.dtype == torch.float32 and b.dtype == torch.float32)
