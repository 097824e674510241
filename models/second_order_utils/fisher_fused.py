"""The Fisher's per-sample squared gradients in one Triton kernel: S = sum_b (G[b]^T X[b])^2.

For an adapted linear layer with inputs X (B, T, I) and output gradients G (B, T, O), each program keeps one
(BLOCK_O x BLOCK_I) fp32 tile of a sample's product G[b]^T X[b] in registers over the token loop, squares it and adds
it to a sum-of-squares tile over its samples; the (B, O, I) per-sample products never reach memory. When the
(O/BLOCK_O)(I/BLOCK_I) tiles are too few to fill the device, a second grid axis splits the samples; the splits'
partial sums go to a (splits, O, I) fp32 buffer summed afterwards.

Precisions (the operands of the token products; squares and sums are always fp32):

* ``fp32``: ``tl.dot(input_precision="ieee")``; ``tf32``: one TF32 product; ``tf32x3``: Triton's three-TF32-product
  emulation of fp32;
* ``bf16``: one product of the operands rounded to bf16; ``bf16x3``: each fp32 operand tile split in registers into
  hi = bf16(v) and lo = bf16(v - hi), the product hi.hi + hi.lo + lo.hi accumulated in fp32 (about 2^-17 relative
  error per operand product, at the bf16 tensor-core rate). The bf16 roundings (to nearest even) are done on the
  fp32 bits, so they are the same on a GPU and in the interpreter.

``interpret=True`` runs the kernel in Triton's CPU interpreter (numpy) on CPU tensors. That interpreter multiplies
bf16 dot operands as their raw 16-bit patterns and its fp32 -> bf16 casts truncate, so there the bf16 products take
fp32 operands holding the same bf16 values (``DOT_DTYPE``; exact products, the same fp32 sums); its dots also ignore
``input_precision`` (tf32 and tf32x3 run as fp32 there).
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch

from utils import accelerator

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the kernel is then unavailable (fused_kernels_available is False)
    triton = None
    tl = None

PRECISIONS = ("fp32", "tf32", "tf32x3", "bf16", "bf16x3")
DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32", "tf32x3": "tf32x3", "bf16": "ieee", "bf16x3": "ieee"}
# BLOCK_O, BLOCK_I, BLOCK_T and launch options on a device: not timed (no GPU yet); chosen so that ptxas (sm_90)
# reports no register spills at any precision (4 warps or 32-token steps spill)
BLOCKS = (64, 64, 16)
LAUNCH = {"num_warps": 8, "num_stages": 3}
TARGET_PROGRAMS = 264  # split the samples until about this many programs run (2 per SM of an H100/H200)


def _sq_grads_kernel(g_ptr, x_ptr, out_ptr, B, T, O, I, samples_per_split,
                     sgb, sgt, sgo, sxb, sxt, sxi, so_s, so_o,
                     BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
                     DOT_PRECISION: tl.constexpr, OPERANDS: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Program (o-tile, i-tile, sample split): out[split, o, i] = sum_{b in split} (sum_t g[b,t,o] x[b,t,i])^2."""
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_t = tl.arange(0, BLOCK_T)
    mask_o = offs_o < O
    mask_i = offs_i < I
    b_start = pid_s.to(tl.int64) * samples_per_split  # 64-bit sample offsets: B*T*O may pass 2^31
    b_end = tl.minimum(b_start + samples_per_split, B)
    squares = tl.full((BLOCK_O, BLOCK_I), 0.0, tl.float32)
    for b in range(b_start, b_end):
        product = tl.full((BLOCK_O, BLOCK_I), 0.0, tl.float32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + offs_t
            mask_t = t < T
            g = tl.load(g_ptr + b * sgb + t[None, :] * sgt + offs_o[:, None] * sgo,
                        mask=mask_o[:, None] & mask_t[None, :], other=0.0).to(tl.float32)  # (BLOCK_O, BLOCK_T)
            x = tl.load(x_ptr + b * sxb + t[:, None] * sxt + offs_i[None, :] * sxi,
                        mask=mask_t[:, None] & mask_i[None, :], other=0.0).to(tl.float32)  # (BLOCK_T, BLOCK_I)
            if OPERANDS == "fp32":
                product = tl.dot(g, x, product, input_precision=DOT_PRECISION)
            else:  # bf16(v) rounded to nearest even by its bits (the interpreter's casts truncate), kept in fp32
                bits = g.to(tl.int32, bitcast=True)
                g_hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
                bits = x.to(tl.int32, bitcast=True)
                x_hi = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
                if OPERANDS == "bf16x3":  # v = hi + lo + O(2^-16 v): hi.lo + lo.hi, then hi.hi; lo.lo left out
                    bits = (g - g_hi).to(tl.int32, bitcast=True)  # v - hi is exact in fp32
                    g_lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
                    bits = (x - x_hi).to(tl.int32, bitcast=True)
                    x_lo = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
                    product = tl.dot(g_lo.to(DOT_DTYPE), x_hi.to(DOT_DTYPE), product, input_precision=DOT_PRECISION)
                    product = tl.dot(g_hi.to(DOT_DTYPE), x_lo.to(DOT_DTYPE), product, input_precision=DOT_PRECISION)
                product = tl.dot(g_hi.to(DOT_DTYPE), x_hi.to(DOT_DTYPE), product, input_precision=DOT_PRECISION)
        squares += product * product
    tl.store(out_ptr + pid_s.to(tl.int64) * so_s + offs_o[:, None] * so_o + offs_i[None, :], squares,
             mask=mask_o[:, None] & mask_i[None, :])


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool) -> Any:
    """The kernel compiled for a device (``triton.jit``) or run by Triton's CPU interpreter, whatever
    ``TRITON_INTERPRET`` said when triton was imported."""
    if triton is None:
        raise RuntimeError("the fused Fisher kernel needs triton, which does not import here")
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(_sq_grads_kernel)
    return triton.jit(_sq_grads_kernel)


def sample_splits(b: int, tiles: int, target: int = TARGET_PROGRAMS) -> int:
    """Sample splits of the grid: 1 when the (O, I) tiles alone reach ``target`` programs, else enough splits to
    reach it (at most one per sample)."""
    return max(1, min(b, -(-target // max(1, tiles))))


def fused_sq_grads(g: torch.Tensor, x: torch.Tensor, precision: str = "fp32", splits: Optional[int] = None,
                   blocks: Optional[tuple[int, int, int]] = None, interpret: bool = False) -> torch.Tensor:
    """S[o, i] = sum_b (sum_t g[b, t, o] x[b, t, i])^2 in fp32, for ``g`` (B, T, O) and ``x`` (B, T, I) of any
    strides and float dtype, without the (B, O, I) per-sample products. ``splits``: sample splits of the grid
    (default: :func:`sample_splits`); ``blocks``: (BLOCK_O, BLOCK_I, BLOCK_T), each a power of 2 >= 16;
    ``interpret``: Triton's CPU interpreter (CPU tensors)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown fused-kernel precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if g.dim() != 3 or x.dim() != 3 or g.shape[:2] != x.shape[:2]:
        raise ValueError(f"expected g (B, T, O) and x (B, T, I) with equal B and T, got {tuple(g.shape)} and "
                         f"{tuple(x.shape)}")
    if g.device != x.device:
        raise ValueError(f"g and x on different devices ({g.device}, {x.device})")
    n_b, n_t, n_o = g.shape
    n_i = x.shape[2]
    if n_b == 0 or n_t == 0 or n_o == 0 or n_i == 0:
        return torch.zeros(n_o, n_i, dtype=torch.float32, device=g.device)
    block_o, block_i, block_t = blocks or BLOCKS
    tiles_o, tiles_i = -(-n_o // block_o), -(-n_i // block_i)
    per_split = -(-n_b // max(1, min(n_b, splits if splits is not None else sample_splits(n_b, tiles_o * tiles_i))))
    n_split = -(-n_b // per_split)  # no empty split
    kernel = _kernel(interpret)
    out = torch.empty(n_split, n_o, n_i, dtype=torch.float32, device=g.device)
    operands = precision if precision.startswith("bf16") else "fp32"
    dot_dtype = tl.bfloat16 if operands != "fp32" and not interpret else tl.float32
    with accelerator.on_device(g.device):  # Triton launches on the current device
        kernel[(tiles_o, tiles_i, n_split)](
            g, x, out, n_b, n_t, n_o, n_i, per_split, *g.stride(), *x.stride(), out.stride(0), out.stride(1),
            BLOCK_O=block_o, BLOCK_I=block_i, BLOCK_T=block_t, DOT_PRECISION=DOT_PRECISION[precision],
            OPERANDS=operands, DOT_DTYPE=dot_dtype, **({} if interpret else LAUNCH))
    return out[0] if n_split == 1 else out.sum(0)


FISHER_PRECISION = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16", "bf16x3": "bf16x3"}
INTERPRET = False  # tests: the Fisher's fused form runs in Triton's CPU interpreter (fisher.square_sum_form)


def kernel_precision(fisher_precision: Optional[str], dtype: torch.dtype) -> str:
    """The kernel precision of a Fisher pass: its precision's namesake, else (no name) from the per-sample
    products' dtype (bf16 -> ``bf16``, otherwise ``fp32``)."""
    if fisher_precision in FISHER_PRECISION:
        return FISHER_PRECISION[fisher_precision]
    return "bf16" if dtype == torch.bfloat16 else "fp32"
