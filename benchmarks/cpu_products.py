"""torch's fp32 CPU products beside the same products routed to oneDNN, at the Fisher pass's shapes.

    python -m benchmarks.cpu_products [--quick] [--threads 1] [--repeats 5] [--out FILE.json]

For each product of the Fisher pass on a ViT at 197 tokens and 16 images per forward
(``fisher_scores.CPU_FISHER_ROWS``), side by side on the same operands (median of ``--repeats``): torch's own product
(its BLAS: MKL in the PyPI wheels) and the oneDNN one the Fisher pass uses on a CPU (``utils/onednn_products.py``:
the dispatch mode for ``mm``/``addmm``, ``attention_grads``, ``square_sums`` for the per-sample products with their
square-and-sum); seconds, GFLOP/s, the speed-up, and both results' relative error against float64. Widths:
ViT-B/16's 768 (12 heads) and the 192 (3 heads) of ``benchmarks.fisher_reference``; ``--quick``: width 192 alone.
Products: qkv's forward, (16 x 197, D) @ (D, 3D); its input gradient, (16 x 197, 3D) @ (3D, D); the attention
backward's four products over (16, H) (torch: batched products; oneDNN: per image and head); qkv's per-sample
products squared and summed over the 16 images (torch: the batched product, then the ``inplace`` square-sum).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from utils import onednn_products  # noqa: E402
from utils.io import write_json  # noqa: E402

IMAGES, TOKENS, HEAD_DIM = 16, 197, 64
SCALE = HEAD_DIM ** -0.5


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: torch.Tensor, out: torch.Tensor,
                       dout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv with torch's batched products, as the Fisher's kept-probabilities attention computes them."""
    dv = p.transpose(-2, -1) @ dout
    ds = (dout @ v.transpose(-2, -1) - (dout * out).sum(-1, keepdim=True)) * p
    return (ds @ k) * SCALE, (ds.transpose(-2, -1) @ q) * SCALE, dv


def cases(width: int) -> dict[str, tuple[float, Callable[[], torch.Tensor], Callable[[], torch.Tensor],
                                         Callable[[], torch.Tensor]]]:
    """name -> (FLOPs, torch's product, the oneDNN one, the float64 reference)."""
    g = torch.Generator().manual_seed(0)
    rows, heads = IMAGES * TOKENS, width // HEAD_DIM

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)
    x, w_qkv, dy = randn(rows, width), randn(width, 3 * width), randn(rows, 3 * width)
    q, k, v = (randn(IMAGES, heads, TOKENS, HEAD_DIM) for _ in range(3))
    p = torch.softmax(q @ k.transpose(-2, -1) * SCALE, -1)
    out, dout = p @ v, randn(IMAGES, heads, TOKENS, HEAD_DIM)
    gs, xs = dy.view(IMAGES, TOKENS, 3 * width), x.view(IMAGES, TOKENS, width)

    def routed(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with onednn_products.OneDnnProducts():
                return fn()
        return run
    return {
        "qkv forward": (2.0 * rows * width * 3 * width, lambda: x @ w_qkv, routed(lambda: x @ w_qkv),
                        lambda: x.double() @ w_qkv.double()),
        "qkv input gradient": (2.0 * rows * 3 * width * width, lambda: dy @ w_qkv.t(), routed(lambda: dy @ w_qkv.t()),
                               lambda: dy.double() @ w_qkv.double().t()),
        "attention backward": (4 * 2.0 * IMAGES * heads * TOKENS ** 2 * HEAD_DIM,
                               lambda: torch.cat(attention_backward(q, k, v, p, out, dout), -1),
                               lambda: torch.cat(onednn_products.attention_grads(q, k, v, p, out, dout, SCALE), -1),
                               lambda: torch.cat(attention_backward(*(t.double() for t in (q, k, v, p, out, dout))),
                                                 -1)),
        "qkv per-sample squares": (2.0 * rows * 3 * width * width,
                                   lambda: torch.einsum("bto,bti->boi", gs, xs).square_().sum(0),
                                   lambda: onednn_products.square_sums(gs, xs),
                                   lambda: torch.einsum("bto,bti->boi", gs.double(), xs.double()).square().sum(0)),
    }


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


def measure(width: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for name, (flops, blas, onednn, reference) in cases(width).items():
        ref = reference()
        seconds: dict[str, list[float]] = {"torch": [], "onednn": []}
        errors: dict[str, float] = {}
        for _ in range(repeats + 1):  # the first round (oneDNN's kernel set-up) is not counted
            for side, fn in (("torch", blas), ("onednn", onednn)):
                start = time.perf_counter()
                out = fn()
                seconds[side].append(time.perf_counter() - start)
                errors[side] = rel(out, ref)
        med = {side: statistics.median(t[1:]) for side, t in seconds.items()}
        rows.append({"width": width, "product": name, "gflop": flops / 1e9, "seconds": med,
                     "gflop_per_s": {side: flops / s / 1e9 for side, s in med.items()},
                     "speedup": med["torch"] / med["onednn"], "rel_err": errors})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="width 192 only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    if not onednn_products.available():
        print("error: this torch has no oneDNN fp32 products (torch.backends.mkldnn); nothing to compare",
              file=sys.stderr)
        return 2
    torch.set_num_threads(opts.threads)
    rows = [r for width in ((192,) if opts.quick else (768, 192)) for r in measure(width, opts.repeats)]
    print(f"fp32 CPU products, {opts.threads} thread(s), {IMAGES} images x {TOKENS} tokens; torch's BLAS vs oneDNN")
    print(f"{'width':>5s} {'product':24s} {'GFLOP':>7s} {'torch GFLOP/s':>14s} {'oneDNN GFLOP/s':>15s} "
          f"{'speed-up':>9s} {'err torch':>10s} {'err oneDNN':>11s}")
    for r in rows:
        print(f"{r['width']:5d} {r['product']:24s} {r['gflop']:7.2f} {r['gflop_per_s']['torch']:14.1f} "
              f"{r['gflop_per_s']['onednn']:15.1f} {r['speedup']:8.2f}x {r['rel_err']['torch']:10.1e} "
              f"{r['rel_err']['onednn']:11.1e}")
    if opts.out:
        write_json(opts.out, {"threads": opts.threads, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
