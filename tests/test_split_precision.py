"""The bf16x3 split (utils/split_precision.py): three bf16 products with fp32 sums, against float64 and against the
definition summed by hand; every product kind under the mode, forward and backward; the Fisher pass in bf16x3;
the same on the suite's test accelerator (a child process: a PrivateUse1 backend registers once per process)."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

from utils.split_precision import Bf16x3, bf16x3_mm, split_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """hi_a hi_b + hi_a lo_b + lo_a hi_b in float64 (exact products, exact sums)."""
    (ah, al), (bh, bl) = split_bf16(a), split_bf16(b)
    ah, al, bh, bl = (t.double() for t in (ah, al, bh, bl))
    return ah @ bh + ah @ bl + al @ bh


def test_split_parts_rebuild_the_operand_to_16_bits():
    x = torch.randn(1000) * torch.logspace(-20, 20, 1000)
    hi, lo = split_bf16(x)
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert float(((hi.double() + lo.double() - x.double()).abs() / x.double().abs()).max()) <= 2 ** -16


@pytest.mark.parametrize("shape", [((37, 211), (211, 19)), ((3, 13, 197), (3, 197, 40))])
def test_product_is_the_three_term_sum_and_near_fp32(shape):
    torch.manual_seed(0)
    a, b = torch.randn(shape[0]), torch.randn(shape[1])
    out = bf16x3_mm(a, b)
    exact = a.double() @ b.double()
    assert out.dtype == torch.float32 and out.shape == exact.shape
    assert rel(out, by_hand(a, b)) <= 1e-6  # the definition, up to fp32 summation
    err, bf16_err = rel(out, exact), rel(a.bfloat16() @ b.bfloat16(), exact)
    assert err <= 2e-5 and err < bf16_err / 100  # about 2^-17, a hundred times below one bf16 product
    assert not torch.equal(out, a @ b)  # the split really ran


def test_mode_covers_every_product_forward_and_backward():
    torch.manual_seed(1)
    x = torch.randn(6, 9, 24, dtype=torch.float32)
    w, bias = torch.randn(16, 24), torch.randn(16)
    ref = {}
    for split in (False, True):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, bias))
        mode = Bf16x3() if split else None
        with mode if mode else contextlib.nullcontext():
            y = torch.nn.functional.linear(xs, ws, bs)  # addmm / mm
            z = torch.baddbmm(y[:, :, :9], xs, xs.transpose(1, 2), beta=0.5, alpha=2.0)  # baddbmm
            loss = (y.square().sum() + z.square().sum() + torch.einsum("bto,bti->oi", y, xs).square().sum())
            loss.backward()
        out = {"y": y.detach(), "z": z.detach(), "gx": xs.grad, "gw": ws.grad, "gb": bs.grad}
        if split:
            assert mode.calls >= 8  # forward and backward products all went through the split
            for k, v in out.items():
                assert 0 < rel(v, ref[k]) <= 1e-4, k
        ref = out


def test_other_dtypes_pass_through():
    a = torch.randn(4, 5, dtype=torch.float64)
    with Bf16x3() as mode:
        out = a @ a.t()
    assert mode.calls == 0 and out.dtype == torch.float64 and torch.equal(out, a @ a.t())


ACCELERATOR = r'''
import torch
from tests import accelerator_backend as B
from utils.split_precision import Bf16x3, bf16x3_mm
d = B.register()
torch.manual_seed(0)
a, b = torch.randn(20, 50), torch.randn(50, 7)
with Bf16x3() as mode:
    out = a.to(d) @ b.to(d)
assert out.device == d and mode.calls == 1
assert torch.equal(out.cpu(), bf16x3_mm(a, b)), "the device computes what the CPU computes"
print("ok")
'''


def test_split_on_the_test_accelerator():
    res = subprocess.run([sys.executable, "-c", ACCELERATOR], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
