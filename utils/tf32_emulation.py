"""TF32 matrix products emulated on any device: operands rounded to TF32, products accumulated in fp32.

TF32 (NVIDIA tensor cores, ``torch.backends.cuda.matmul.allow_tf32``) keeps fp32's 8-bit exponent and 10 of its 23
mantissa bits; the GEMM rounds its fp32 operands to that format (round to nearest, ties away from zero, as the PTX
conversion ``cvt.rna.tf32.f32`` does) and accumulates the products in fp32. :class:`TF32Emulation` is a
``TorchDispatchMode`` that does the same for the matrix products and convolutions of everything run under it,
forward and backward, so a CPU run shows what TF32 does to a result.

Covered: ``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``addbmm``, ``convolution`` and ``convolution_backward`` (linear
layers and ``matmul`` reach these), and the query, key and value of ``scaled_dot_product_attention``'s CPU
kernels (the attention-probability x value product inside the fused kernel is not rounded). Bias terms are added
in fp32, as in the GEMM epilogue. Tensors of other dtypes pass through unchanged. ``TF32Emulation(grouped=False)``
leaves grouped convolutions (depthwise ones included) in fp32: a GPU may run those in kernels that are not GEMMs
and do not use TF32, so the two bracket what TF32 does to a network that has them.
``TF32Emulation(follow_switches=True)`` rounds only where CUDA would use TF32 at that moment: matrix products while
``torch.backends.cuda.matmul.allow_tf32`` is set, convolutions while ``torch.backends.cudnn.allow_tf32`` is (the
switches ``-O 1`` and ``--fisher_precision`` set, on any device).
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

DROPPED_BITS = 13  # 23 fp32 mantissa bits - 10 TF32 bits
_HALF = 1 << (DROPPED_BITS - 1)
_MASK = ~((1 << DROPPED_BITS) - 1)


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (fp32) rounded to the nearest TF32 value, ties away from zero (inf and nan unchanged); the result is
    an fp32 tensor whose 13 low mantissa bits are zero. Other dtypes are returned as they are."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    rounded = ((bits + _HALF) & _MASK).view(torch.float32)  # a carry into the exponent is the correct rounding
    return torch.where(torch.isfinite(x), rounded, x).view(x.shape)


aten = torch.ops.aten
# op -> positions of the arguments that are GEMM/convolution operands (bias and accumulator inputs are not)
_OPERANDS: dict[Any, tuple[int, ...]] = {
    aten.mm.default: (0, 1),
    aten.bmm.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.baddbmm.default: (1, 2),
    aten.addbmm.default: (1, 2),
    aten.convolution.default: (0, 1),
    aten.convolution_backward.default: (0, 1, 2),  # grad_output, input, weight
}
_GROUPS = {aten.convolution.default: 8, aten.convolution_backward.default: 9}  # position of ``groups``
_CONVOLUTIONS = tuple(_GROUPS)
for _name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_attention_math"):
    if hasattr(aten, _name):
        _OPERANDS[getattr(aten, _name).default] = (0, 1, 2)


class TF32Emulation(TorchDispatchMode):
    """While active, every covered matrix product and convolution runs on TF32-rounded fp32 operands
    (``grouped=False``: convolutions with ``groups > 1`` excepted)."""

    def __init__(self, grouped: bool = True, follow_switches: bool = False) -> None:
        super().__init__()
        self.grouped, self.follow_switches = grouped, follow_switches
        self.calls = 0  # products and convolutions rounded so far

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        positions = _OPERANDS.get(func)
        if positions is not None and not self.grouped and func in _GROUPS and int(args[_GROUPS[func]]) > 1:
            positions = None
        if positions is not None and self.follow_switches and not _switched_on(func):
            positions = None
        if positions is not None:
            args = tuple(round_to_tf32(a) if i in positions and isinstance(a, torch.Tensor) else a
                         for i, a in enumerate(args))
            self.calls += 1
        return func(*args, **kwargs)


def _switched_on(func: Any) -> bool:
    if func in _CONVOLUTIONS:
        return bool(torch.backends.cudnn.allow_tf32)
    return bool(torch.backends.cuda.matmul.allow_tf32)


def emulated(x: Any) -> Any:
    """``round_to_tf32`` over the tensors of a (nested) structure."""
    return tree_map(lambda t: round_to_tf32(t) if isinstance(t, torch.Tensor) else t, x)
