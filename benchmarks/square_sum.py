"""The Fisher's memory pass, sum_b P[b]^2 over per-sample products P of shape (B, O, I), in each candidate form.

    python -m benchmarks.square_sum [--device cpu|cuda] [--shapes B,O,I ...] [--tokens 197] [--repeats 10]
                                    [--out FILE.json]

Forms (``models.second_order_utils.fisher.square_sum``): ``inplace`` (square in place, sum over the contiguous
leading dimension: 12 bytes moved per element after the GEMM's write), ``norm`` (the 2-norm over that dimension,
squared: one read, 4 bytes) and ``einsum`` (``boi,boi->oi``, a batched dot: a bmm of O*I (1 x B)(B x 1) products), plus
``pow_sum`` (``P.pow(2).sum(0)``, a squared copy first, as the reference implementation does) for comparison. The
forms are timed interleaved on the same tensors (median of ``--repeats``), their results compared, and the
fastest form printed; the default shapes are the per-sample products of ViT-B/16's qkv and fc1 and of a ViT-Tiny
qkv at 64 images.

Then the whole per-sample pass on the same g (B, T, O) and x (B, T, I) with T = ``--tokens``: the fp32 GEMM
``bto,bti->boi`` (torch's own) plus each form, beside the one-pass forms: ``fused`` (``fisher_fused.fused_sq_grads``:
product and square-sum in one Triton kernel, fp32 as the fp32 Fisher runs it) where Triton runs it
(``accelerator.fused_kernels_available``; elsewhere the output says it is skipped) and ``onednn``
(``utils.onednn_products.square_sums``: per sample one oneDNN product squared into the sum) on a CPU with oneDNN;
the fastest of these, and whether it is the form the Fisher uses on the device (``fisher.square_sum_form``).
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

from models.second_order_utils.fisher import fisher_precision, square_sum, square_sum_form  # noqa: E402
from models.second_order_utils.fisher_fused import fused_sq_grads  # noqa: E402
from utils import onednn_products  # noqa: E402
from utils.accelerator import fused_kernels_available, synchronize  # noqa: E402
from utils.io import write_json  # noqa: E402

DEFAULT_SHAPES = ["16,2304,768", "16,3072,768", "64,576,192"]
FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "inplace": lambda p: square_sum(p, "inplace"),
    "norm": lambda p: square_sum(p, "norm"),
    "einsum": lambda p: square_sum(p, "einsum"),
    "pow_sum": lambda p: p.pow(2).sum(0),
}
PASS_FORMS = ("inplace", "norm", "einsum")  # the Fisher's forms of the materialised products
ONE_PASS_FORMS = ("fused", "onednn")  # products and square-sum in one pass: Triton (CUDA), oneDNN (CPU)
FUSED_SKIPPED = "skipped: Triton runs the fused kernel on CUDA devices only"


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def measure(shape: tuple[int, int, int], device: torch.device, repeats: int,
            tokens: Optional[int] = None) -> dict[str, Any]:
    """Median seconds of each form on one shape (a fresh copy per call: ``inplace`` consumes its argument); with
    ``tokens``, also ``with_product``: :func:`measure_pass` on g, x of that many tokens."""
    base = torch.randn(*shape, device=device)
    ref = base.double().pow(2).sum(0)
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    err: dict[str, float] = {}
    for _ in range(repeats):
        for name, form in FORMS.items():
            p = base.clone()
            seconds, out = timed(lambda: form(p), device)
            times[name].append(seconds)
            err[name] = float((out.double() - ref).abs().max() / ref.abs().max())
    med = {f: statistics.median(t) for f, t in times.items()}
    row = {"shape": list(shape), "seconds": med, "max_rel_err": err, "fastest": min(med, key=med.get)}
    if tokens:
        row["with_product"] = measure_pass(shape, tokens, device, repeats)
    return row


def pass_inputs(shape: tuple[int, int, int], tokens: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """g (B, T, O), x (B, T, I) and the float64 sum_b (g[b]^T x[b])^2."""
    b, o, i = shape
    g, x = torch.randn(b, tokens, o, device=device), torch.randn(b, tokens, i, device=device)
    return g, x, torch.einsum("bto,bti->boi", g.double(), x.double()).square().sum(0)


def measure_pass(shape: tuple[int, int, int], tokens: int, device: torch.device, repeats: int) -> dict[str, Any]:
    """Median seconds of the whole per-sample pass, the fp32 GEMM + each form and the fused kernel (fp32), timed
    interleaved on the same g, x; their errors against float64, the fastest, the form used on ``device``."""
    g, x, ref = pass_inputs(shape, tokens, device)
    forms: dict[str, Callable[[], torch.Tensor]] = {
        f: (lambda f=f: square_sum(torch.einsum("bto,bti->boi", g, x), f)) for f in PASS_FORMS}
    fused = "fp32" if fused_kernels_available(device) else FUSED_SKIPPED
    if fused == "fp32":
        forms["fused"] = lambda: fused_sq_grads(g, x, "fp32")
    if device.type == "cpu" and onednn_products.available():
        forms["onednn"] = lambda: onednn_products.square_sums(g, x)
    times: dict[str, list[float]] = {f: [] for f in forms}
    err: dict[str, float] = {}
    # as the fp32 Fisher (TF32 off); the materialised forms' GEMM is torch's own (no oneDNN routing by default)
    with fisher_precision("fp32", device):
        for _ in range(repeats):
            for name, fn in forms.items():
                seconds, out = timed(fn, device)
                times[name].append(seconds)
                err[name] = float((out.double() - ref).abs().max() / ref.abs().max())
    med = {f: statistics.median(t) for f, t in times.items()}
    fastest = min(med, key=med.get)
    chosen = square_sum_form(device)
    return {"tokens": tokens, "seconds": med, "max_rel_err": err, "fastest": fastest, "chosen": chosen,
            "chosen_is_fastest": fastest == chosen, "fused": fused}


def fused_precisions(shape: tuple[int, int, int], tokens: int, device: torch.device, repeats: int,
                     precisions: tuple[str, ...] = ("fp32", "tf32x3", "bf16x3")) -> dict[str, Any]:
    """The fused kernel at each precision on one g, x: median seconds, achieved TFLOP/s (2 B T O I per pass) and
    the largest error relative to the largest float64 value."""
    g, x, ref = pass_inputs(shape, tokens, device)
    flops = 2.0 * shape[0] * tokens * shape[1] * shape[2]
    out: dict[str, Any] = {}
    for precision in precisions:
        fused_sq_grads(g, x, precision)  # compile outside the timing
        times, result = [], None
        for _ in range(repeats):
            seconds, result = timed(lambda: fused_sq_grads(g, x, precision), device)
            times.append(seconds)
        med = statistics.median(times)
        out[precision] = {"seconds": med, "tflop_per_s": flops / med / 1e12,
                          "max_rel_err": float((result.double() - ref).abs().max() / ref.abs().max())}
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="B,O,I of the per-sample products")
    parser.add_argument("--tokens", type=int, default=197, help="T of the whole-pass timing (0: skip it)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    device = torch.device(opts.device)
    rows = [measure(tuple(int(v) for v in s.split(",")), device, opts.repeats, opts.tokens) for s in opts.shapes]
    print(f"{'B,O,I':>16s} " + " ".join(f"{f:>11s}" for f in FORMS) + "   einsum/inplace  fastest")
    for r in rows:
        s = r["seconds"]
        print(f"{','.join(map(str, r['shape'])):>16s} " + " ".join(f"{s[f] * 1e3:9.2f}ms" for f in FORMS)
              + f"   {s['einsum'] / s['inplace']:14.2f}  {r['fastest']}")
    if opts.tokens:
        print(f"\nGEMM + square-sum at T = {opts.tokens} (fp32), and the fused kernel:")
        print(f"{'B,O,I':>16s} " + " ".join(f"{f:>11s}" for f in (*PASS_FORMS, *ONE_PASS_FORMS))
              + "  fastest  chosen")
        for r in rows:
            w = r["with_product"]
            cells = [f"{w['seconds'][f] * 1e3:9.2f}ms" if f in w["seconds"] else f"{'skipped':>11s}"
                     for f in (*PASS_FORMS, *ONE_PASS_FORMS)]
            print(f"{','.join(map(str, r['shape'])):>16s} " + " ".join(cells)
                  + f"  {w['fastest']:>7s}  {w['chosen']}{'' if w['chosen_is_fastest'] else ' (not the fastest)'}")
        if rows[0]["with_product"]["fused"] != "fp32":
            print(f"fused: {rows[0]['with_product']['fused']}")
    if opts.out:
        write_json(opts.out, {"device": str(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
