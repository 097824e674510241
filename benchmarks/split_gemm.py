"""The bf16x3 matrix product beside fp32 and TF32, at the Fisher pass's shapes.

    python -m benchmarks.split_gemm [--device cuda] [--quick] [--out FILE.json]

For each shape, side by side on the same operands (median of ``--repeats`` timings, synchronised): torch's fp32
product (TF32 off), TF32 (CUDA only), bf16x3 with the torch split (``utils.split_precision.bf16x3_mm``) and, where
Triton runs, the bf16x3 kernel (``utils.split_precision_triton``); each one's relative Frobenius error against the
float64 product, its seconds, its rate in fp32-equivalent TFLOP/s, and its speed-up over fp32. Shapes (ViT-B/16,
197 tokens, ``--quick``: a quarter of each dimension): the input gradient of qkv over a statistics batch of 64
images, (64 x 197, 2304) @ (2304, 768), and a batch of 16 per-sample products of qkv, (16, 2304, 197) @ (16, 197,
768). On a CPU the bf16x3 forms are slower than fp32 (three fp32 products of bf16 values): the CPU columns check the
errors; the speed is a GPU question (``benchmarks/gpu_check.py --full`` runs this with ``--device cuda``).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks.speed import timed  # noqa: E402
from utils import accelerator  # noqa: E402
from utils.io import write_json  # noqa: E402
from utils.split_precision import bf16x3_mm  # noqa: E402

SHAPES = {"input_grad_qkv": (None, 64 * 197, 2304, 768), "per_sample_qkv": (16, 2304, 197, 768)}


def operands(shape: tuple, scale: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    batch, m, k, n = shape
    m, k, n = max(1, m // scale), max(1, k // scale), max(1, n // scale)
    g = torch.Generator(device="cpu").manual_seed(0)
    lead = () if batch is None else (batch,)
    a = torch.randn(*lead, m, k, generator=g).to(device)
    b = torch.randn(*lead, k, n, generator=g).to(device)
    return a, b


def plain(tf32: bool) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """torch's product with TF32 on or off for matrix products (restored after)."""
    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        saved = accelerator.tf32()
        accelerator.set_tf32(tf32, saved[1])
        try:
            return a @ b
        finally:
            accelerator.set_tf32(*saved)
    return product


def forms(device: torch.device) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    found: dict[str, Callable] = {"fp32": plain(False)}
    if accelerator.tf32_available() and accelerator.is_accelerator(device):
        found["tf32"] = plain(True)
    found["bf16x3_torch"] = bf16x3_mm
    if accelerator.fused_kernels_available(device):
        from utils.split_precision_triton import bf16x3_mm_triton
        found["bf16x3_triton"] = bf16x3_mm_triton
    return found


def measure(device: torch.device, scale: int = 1, repeats: int = 5) -> dict[str, Any]:
    """Per shape and form: seconds, relative error against float64, fp32-equivalent TFLOP/s, speed-up over fp32."""
    out: dict[str, Any] = {}
    for name, shape in SHAPES.items():
        a, b = operands(shape, scale, device)
        exact = (a.double() @ b.double())
        flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.dim() == 3 else 1)
        rows: dict[str, Any] = {}
        for form, fn in forms(device).items():
            fn(a, b)  # warm-up (and the Triton compilation)
            seconds, result = timed(lambda: fn(a, b), device, repeats)
            err = float((result.double() - exact).norm() / exact.norm())
            rows[form] = {"seconds": seconds, "rel_err": err, "tflops": flops / seconds / 1e12}
        for row in rows.values():
            row["speedup_vs_fp32"] = rows["fp32"]["seconds"] / row["seconds"]
        out[name] = {"shape": [list(a.shape), list(b.shape)], "flops": flops, "forms": rows}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a quarter of every dimension")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    device = accelerator.check_device(opts.device)
    res = measure(device, 4 if opts.quick else 1, opts.repeats)
    print(f"bf16x3 beside fp32 ({device}; median of {opts.repeats}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")
    for name, r in res.items():
        print(f"{name} {' @ '.join(str(tuple(s)) for s in r['shape'])}")
        for form, row in r["forms"].items():
            print(f"  {form:14s} {row['seconds'] * 1e3:10.2f} ms  rel. err {row['rel_err']:.1e}  "
                  f"{row['tflops']:8.2f} TFLOP/s  x{row['speedup_vs_fp32']:.2f} vs fp32")
    if opts.out:
        write_json(opts.out, {"device": str(device), "results": res, "load_average": list(os.getloadavg())})
    return 0


if __name__ == "__main__":
    from benchmarks.compare import exit_code  # bad input or a device this machine lacks: one line, exit code 2
    sys.exit(exit_code(main))
