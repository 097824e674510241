"""utils/tf32_emulation.py against a hand-rounded reference: values rounded to 11 significant bits with math.frexp,
products of the rounded operands in float64."""
import math

import pytest
import torch
import torch.nn.functional as F

from utils.tf32_emulation import TF32Emulation, round_to_tf32


def hand_round(v: float) -> float:
    """Nearest value with an 11-bit significand (1 implicit + 10 stored), ties away from zero."""
    if v == 0.0 or not math.isfinite(v):
        return v
    m, e = math.frexp(v)  # v = m * 2**e, 0.5 <= |m| < 1
    scaled = abs(m) * 2 ** 11
    return math.copysign(math.floor(scaled + 0.5), m) * 2.0 ** (e - 11)


def hand(t: torch.Tensor) -> torch.Tensor:
    return torch.tensor([hand_round(float(v)) for v in t.flatten()], dtype=torch.float64).view(t.shape)


def test_rounding_matches_the_hand_reference_including_ties_and_specials():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, generator=g) * torch.logspace(-30, 30, 2000)
    ties = torch.tensor([1 + 2 ** -11, -(1 + 3 * 2 ** -11), 2 ** -11 + 2 ** -22, 3.0 * 2 ** 100 + 2 ** 90])
    x = torch.cat([x, ties, torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 3.4e38])])
    got = round_to_tf32(x)
    assert got.dtype == torch.float32
    assert torch.equal(got.double(), hand(x))
    assert (got.view(torch.int32) & 0x1FFF).eq(0).all()  # 13 low mantissa bits cleared
    assert float(round_to_tf32(torch.tensor([1 + 2 ** -11]))) == 1 + 2 ** -10  # the tie goes away from zero
    assert torch.isnan(round_to_tf32(torch.tensor([float("nan")]))).all()
    assert (round_to_tf32(x[:2000]) - x[:2000]).abs().max() > 0  # it does round


@pytest.mark.parametrize("op", ["linear", "matmul3d", "addmm"])
def test_products_use_rounded_operands_with_fp32_accumulation(op):
    g = torch.Generator().manual_seed(1)
    a, w, b = torch.randn(4, 3, 96, generator=g), torch.randn(40, 96, generator=g), torch.randn(40, generator=g)
    with TF32Emulation() as mode:
        if op == "linear":
            got = F.linear(a, w, b)
        elif op == "matmul3d":
            got = a @ w.t().expand(4, 96, 40)
        else:
            got = torch.addmm(b, a[0], w.t())
    assert mode.calls >= 1
    ra, rw = hand(a), hand(w)
    if op == "linear":
        ref = ra @ rw.t() + b.double()
    elif op == "matmul3d":
        ref = ra @ rw.t()
    else:
        ref = b.double() + ra[0] @ rw.t()
    exact = F.linear(a.double(), w.double(), b.double()) if op == "linear" else ref * 0 + (
        a.double() @ w.double().t() if op == "matmul3d" else b.double() + a[0].double() @ w.double().t())
    assert (got.double() - ref).abs().max() < 2e-5  # fp32 accumulation of the rounded products
    assert (got.double() - exact).abs().max() > 1e-3  # and not the fp32 product of the unrounded operands


def test_convolution_and_backward_are_rounded():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, generator=g, requires_grad=True)
    up = torch.randn(2, 5, 6, 6, generator=g)
    with TF32Emulation():
        y = F.conv2d(x, w)
        gx, gw = torch.autograd.grad(y, (x, w), up)
    rx, rw, rup = hand(x.detach()), hand(w.detach()), hand(up)
    xr = rx.clone().requires_grad_(True)
    wr = rw.clone().requires_grad_(True)
    ref = F.conv2d(xr, wr)
    assert (y.double() - ref).abs().max() < 1e-5
    # the backward's operands rounded too: grad wrt x uses rounded (up, w), grad wrt w uses rounded (up, x)
    ref_gx, ref_gw = torch.autograd.grad(ref, (xr, wr), rup)
    assert (gx.double() - ref_gx).abs().max() < 1e-5 and (gw.double() - ref_gw).abs().max() < 1e-4
    exact_gw = torch.autograd.grad(F.conv2d(x.double(), w.double()), w, up.double())[0]
    assert (gw.double() - exact_gw).abs().max() > 1e-3


def test_other_dtypes_and_ops_pass_through():
    a = torch.randn(8, 8, dtype=torch.float64)
    outside = a @ a
    with TF32Emulation() as mode:
        assert torch.equal(a @ a, outside)  # float64: untouched
        s = torch.randn(5).exp()
    assert mode.calls == 1 and s.dtype == torch.float32


def test_grouped_convolutions_can_stay_in_fp32():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    wd, wf = torch.randn(4, 1, 3, 3, generator=g), torch.randn(5, 4, 1, 1, generator=g)
    up = torch.randn(2, 5, 6, 6, generator=g)

    def net():
        y = F.conv2d(F.conv2d(x, wd, groups=4), wf)  # depthwise, then pointwise
        return y, torch.autograd.grad(y, x, up)[0]
    exact_y, exact_gx = net()
    with TF32Emulation(grouped=False) as mode:
        y, gx = net()
    # by hand: the depthwise forward and backward exact, the pointwise ones on rounded operands
    d = F.conv2d(x, wd, groups=4)
    dr = d.detach().clone().requires_grad_(True)
    ref_y = F.conv2d(hand(dr.detach()), hand(wf))
    g_d = F.conv_transpose2d(hand(up), hand(wf))  # grad of the pointwise conv wrt its input
    ref_gx = torch.autograd.grad(d, x, g_d.float())[0]
    assert (y.double() - ref_y).abs().max() < 1e-5 and (gx.double() - ref_gx.double()).abs().max() < 1e-5
    assert (y - exact_y).abs().max() > 1e-4  # the pointwise convolution was rounded
    assert mode.calls == 2  # the pointwise forward and backward; the depthwise ones passed through
    with TF32Emulation() as every:
        net()
    assert every.calls == 4


def test_following_the_switches_rounds_only_where_cuda_would_use_tf32():
    from utils import accelerator
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(16, 32, generator=g), torch.randn(32, 8, generator=g)
    x, w = torch.randn(1, 3, 6, 6, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    saved = accelerator.tf32()
    try:
        for matmul, conv in ((False, False), (True, False), (False, True)):
            accelerator.set_tf32(matmul, conv)
            with TF32Emulation(follow_switches=True) as mode:
                prod, out = a @ b, F.conv2d(x, w)
            if matmul:
                assert (prod.double() - hand(a) @ hand(b)).abs().max() < 1e-5
            assert torch.equal(prod, a @ b) != matmul  # rounded exactly when the matmul switch is on
            assert torch.equal(out, F.conv2d(x, w)) != conv
            assert mode.calls == int(matmul) + int(conv)
    finally:
        accelerator.set_tf32(*saved)
