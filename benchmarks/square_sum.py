"""The Fisher's memory pass, sum_b P[b]^2 over per-sample products P of shape (B, O, I), in each candidate form.

    python -m benchmarks.square_sum [--device cpu|cuda] [--shapes B,O,I ...] [--repeats 10] [--out FILE.json]

Forms (``models.second_order_utils.fisher.square_sum``): ``inplace`` (square in place, sum over the contiguous
leading dimension: 12 bytes moved per element after the GEMM's write), ``norm`` (the 2-norm over that dimension,
squared: one read, 4 bytes) and ``einsum`` (``boi,boi->oi``, a batched dot: a bmm of O*I (1 x B)(B x 1) products), plus
``pow_sum`` (``P.pow(2).sum(0)``, a squared copy first, as the reference implementation does) for comparison. The
forms are timed interleaved on the same tensors (median of ``--repeats``), their results compared, and the
fastest form printed; the default shapes are the per-sample products of ViT-B/16's qkv and fc1 and of a ViT-Tiny
qkv at 64 images.
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

from models.second_order_utils.fisher import square_sum  # noqa: E402
from utils.accelerator import synchronize  # noqa: E402
from utils.io import write_json  # noqa: E402

DEFAULT_SHAPES = ["16,2304,768", "16,3072,768", "64,576,192"]
FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "inplace": lambda p: square_sum(p, "inplace"),
    "norm": lambda p: square_sum(p, "norm"),
    "einsum": lambda p: square_sum(p, "einsum"),
    "pow_sum": lambda p: p.pow(2).sum(0),
}


def measure(shape: tuple[int, int, int], device: torch.device, repeats: int) -> dict[str, Any]:
    """Median seconds of each form on one shape (a fresh copy per call: ``inplace`` consumes its argument)."""
    base = torch.randn(*shape, device=device)
    ref = base.double().pow(2).sum(0)
    times: dict[str, list[float]] = {f: [] for f in FORMS}
    err: dict[str, float] = {}
    for _ in range(repeats):
        for name, form in FORMS.items():
            p = base.clone()
            synchronize(device)
            start = time.perf_counter()
            out = form(p)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            err[name] = float((out.double() - ref).abs().max() / ref.abs().max())
    med = {f: statistics.median(t) for f, t in times.items()}
    return {"shape": list(shape), "seconds": med, "max_rel_err": err, "fastest": min(med, key=med.get)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="B,O,I of the per-sample products")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    device = torch.device(opts.device)
    rows = [measure(tuple(int(v) for v in s.split(",")), device, opts.repeats) for s in opts.shapes]
    print(f"{'B,O,I':>16s} " + " ".join(f"{f:>11s}" for f in FORMS) + "   einsum/inplace  fastest")
    for r in rows:
        s = r["seconds"]
        print(f"{','.join(map(str, r['shape'])):>16s} " + " ".join(f"{s[f] * 1e3:9.2f}ms" for f in FORMS)
              + f"   {s['einsum'] / s['inplace']:14.2f}  {r['fastest']}")
    if opts.out:
        write_json(opts.out, {"device": str(device), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
