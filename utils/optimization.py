"""``-O/--code_optimization`` (Mammoth's flag) and ``--precision``: one resolved setting.

====  ====================================================================  ===========
 -O   what runs                                                              precision
====  ====================================================================  ===========
 0    plain fp32 (matmuls at full fp32 precision)                           fp32
 1    TF32 matmuls and convolutions on CUDA (a no-op on a CPU)              fp32
 2    1 + bf16 autocast of the training and evaluation forwards             bf16
 3    2 + ``torch.compile`` of the training forward, compiled once per run    bf16
      (:func:`compiled`; docs/speed.md)
====  ====================================================================  ===========

``--precision`` is kept as the older spelling: ``--precision bf16`` alone means ``-O 2``; given together, the two
must agree (``-O 2 --precision fp32`` is a one-line error). After :func:`resolve_code_optimization` both
attributes are set and consistent, so checkpoints and reports store the resolved pair. With neither flag the level
is the device type's default: the method's own (``ContinualModel.DEFAULT_LEVELS``: second_order runs -O 1 on CUDA,
docs/speed.md has the rule and the measurement), else ``DEFAULT_LEVELS`` here (0 everywhere, CUDA included).
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Optional

import torch

from utils import accelerator
from utils.errors import UserError

LEVELS = (0, 1, 2, 3)
# the -O level when neither -O nor --precision is given, per device type (docs/speed.md: the rule and its numbers)
DEFAULT_LEVELS = {"cuda": 0}
BF16_LEVEL = 2
COMPILE_LEVEL = 3
# the torch.compile backend of -O 3; tests set "aot_eager" (no C++ toolchain needed, the same graph capture)
COMPILE_BACKEND_ENV = "CL_COMPILE_BACKEND"


def default_level(device_type: str, method_levels: Optional[dict[str, int]] = None) -> int:
    """The -O level of a run that gives neither -O nor --precision on this device type (``method_levels``: the
    method's own per-device defaults, which take precedence)."""
    return {**DEFAULT_LEVELS, **(method_levels or {})}.get(device_type, 0)


def run_device_type(args: argparse.Namespace) -> str:
    """The device type the run will use: ``--device``'s, else the default device's."""
    device = getattr(args, "device", None)
    if device:
        return str(device).split(":")[0]
    return accelerator.default_device().type


def resolve_code_optimization(args: argparse.Namespace, method_levels: Optional[dict[str, int]] = None
                              ) -> argparse.Namespace:
    """Fill ``args.code_optimization`` and ``args.precision`` from whichever was given (in place); with neither,
    the device type's default level (the method's, ``method_levels``, first)."""
    level: Optional[int] = getattr(args, "code_optimization", None)
    precision: Optional[str] = getattr(args, "precision", None)
    if level is None:
        level = (BF16_LEVEL if precision == "bf16" else 0 if precision == "fp32"
                 else default_level(run_device_type(args), method_levels))
    implied = "bf16" if level >= BF16_LEVEL else "fp32"
    if precision is not None and precision != implied:
        raise UserError(f"--code_optimization {level} runs in {implied} but --precision {precision} was given; "
                        f"drop --precision (it follows from -O) or pick -O {'2' if precision == 'bf16' else '0 or 1'}")
    args.code_optimization, args.precision = int(level), implied
    return args


def apply_matmul_precision(level: int) -> None:
    """Process-wide fp32 matmul/convolution precision: TF32 allowed from -O 1 (CUDA only)."""
    accelerator.set_tf32(level >= 1, level >= 1 or accelerator.tf32()[1])


def compile_backend() -> str:
    return os.environ.get(COMPILE_BACKEND_ENV, "inductor")


def compiled(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module``'s forward ``torch.compile``-d with the backend of -O 3, compiled once for the run.

    The batch dimension is dynamic from the first call, so a smaller last batch or a concatenated virtual batch
    reuses the graph (a first batch of one is specialised, as torch does for sizes 0 and 1: only ``--batch_size 1``
    starts so, and the loaders merge a one-sample tail into the previous batch; torch 2.14's inductor rejects the
    unspecialised alternative, ``mark_unbacked``, on the patch convolution). The module must read its per-task
    state as tensors (``second_order``'s adapted layers do, and its heads run outside the compiled body,
    ``SecondOrder.train_net``): a guard on a Python value would recompile, and past torch's recompile limit (left at
    its default) that frame would run eagerly. ``tests/test_compile_once.py`` counts the compilations."""
    import torch._dynamo
    forward = torch.compile(module, backend=compile_backend())

    def run(x: torch.Tensor) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return forward(x)
    return run
