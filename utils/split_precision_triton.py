"""The bf16x3 product as one Triton kernel: fp32 operands split into bf16 hi/lo parts in registers.

:func:`utils.split_precision.bf16x3_mm` splits its operands with torch ops and multiplies ``[hi, hi, lo] @ [hi; lo;
hi]``; on a GPU the split alone then moves about 34 bytes per operand element (casts, a subtraction, the
concatenation), as much time as the GEMM itself at ViT-B/16's widths. This kernel loads fp32 tiles, splits them
where they are (``hi = bf16(x)``, ``lo = bf16(x - hi)``, rounded to nearest even on the bits as torch's cast rounds)
and accumulates
``hi_a hi_b + hi_a lo_b + lo_a hi_b`` in fp32 tensor-core products, so it reads what an fp32 GEMM reads.

Triton's interpreter (``TRITON_INTERPRET=1``, the CPU) multiplies bf16 operands wrongly (their raw bits) and its
fp32 -> bf16 casts truncate, so the roundings are done on the bits and, there, the dot operands are fp32 tensors
holding the same bf16 values (``DOT_DTYPE``): the products and fp32 sums are the same; the kernel is otherwise the
one a GPU runs (tests/test_split_precision.py).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from utils import accelerator

BLOCK_K = 32


def blocks(m: int, n: int) -> tuple[int, int, int]:
    """(rows, columns, warps) of an output tile: 128-wide where the output is, 64 otherwise (not tuned on a GPU)."""
    bm, bn = (128 if m >= 128 else 64), (128 if n >= 128 else 64)
    return bm, bn, 8 if bm * bn >= 128 * 128 else 4


@triton.jit
def _bf16_nearest(v):
    """fp32 ``v`` rounded to the nearest bf16 value, ties to even, computed on the bits (the interpreter's casts
    truncate; a GPU's round like this), returned as fp32. Finite values only."""
    bits = v.to(tl.int32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _bf16x3_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                   s_ab, s_am, s_ak, s_bb, s_bk, s_bn, s_cb, s_cm, s_cn,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    pid_m, pid_n, batch = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_base = a_ptr + batch * s_ab
    b_base = b_ptr + batch * s_bb
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(a_base + rm[:, None] * s_am + kk[None, :] * s_ak,
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        b = tl.load(b_base + kk[:, None] * s_bk + rn[None, :] * s_bn,
                    mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        a_hi = _bf16_nearest(a)
        a_lo = _bf16_nearest(a - a_hi)
        b_hi = _bf16_nearest(b)
        b_lo = _bf16_nearest(b - b_hi)
        a_hi, a_lo = a_hi.to(DOT_DTYPE), a_lo.to(DOT_DTYPE)  # exact: the values are bf16 values
        b_hi, b_lo = b_hi.to(DOT_DTYPE), b_lo.to(DOT_DTYPE)
        acc = tl.dot(a_hi, b_hi, acc, input_precision=INPUT_PRECISION)
        acc = tl.dot(a_hi, b_lo, acc, input_precision=INPUT_PRECISION)
        acc = tl.dot(a_lo, b_hi, acc, input_precision=INPUT_PRECISION)
    tl.store(c_ptr + batch * s_cb + rm[:, None] * s_cm + rn[None, :] * s_cn, acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def interpreted() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def bf16x3_mm_triton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for fp32 (M, K) @ (K, N) or (B, M, K) @ (B, K, N), any strides, as one kernel launch."""
    batched = a.dim() == 3
    a3, b3 = (a, b) if batched else (a[None], b[None])
    n_batch, m, k = a3.shape
    n = b3.shape[2]
    out = torch.empty(n_batch, m, n, dtype=torch.float32, device=a.device)
    if n_batch and m and n:
        if not k:
            out.zero_()
        else:
            bm, bn, warps = blocks(m, n)
            grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), n_batch)
            dot_dtype = tl.float32 if interpreted() else tl.bfloat16
            with accelerator.on_device(a.device):  # Triton launches on the current device
                _bf16x3_kernel[grid](a3, b3, out, m, n, k, *a3.stride(), *b3.stride(), *out.stride(),
                                     BM=bm, BN=bn, BK=BLOCK_K, DOT_DTYPE=dot_dtype,
                                     INPUT_PRECISION="ieee" if interpreted() else None, num_warps=warps,
                                     num_stages=3)
    return out if batched else out[0]
