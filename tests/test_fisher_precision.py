"""``--fisher_precision`` and the Fisher pass's memory-lean square-sum, automatic ``--stats_batch_size``.

Tolerances: tf32 equals fp32 on a CPU (no TF32 there; rel. err <= 1e-6); bf16 GEMMs with fp32 squares stay within
rel. Frobenius error 3e-2 of fp32 on a tiny ViT/CNN (bf16 rounds every operand to 8 mantissa bits, ~4e-3 each);
bf16x3 (three bf16 products, fp32 sums) within 1e-4 (about 2^-17 per product).
"""
import pytest
import torch

from models.second_order_utils.fisher import (auto_batch_size, network_fisher, per_sample_sq_grads, square_sum)
from models.second_order_utils.modules import ModulePool, inject_adapters
from tests.test_second_order_math import randomize, tiny_cnn, tiny_vit
from tests.test_second_order_model import argv_for
from app.config import parse_args
from models.second_order_utils.flags import DEFAULT_FISHER_PRECISIONS, resolve_fisher_precision


def fisher_at(make, precision, class_batch=1):
    net = make()
    layers = inject_adapters(net.body, "lora", rank=2)
    pool = ModulePool(layers)
    randomize(pool, 1)
    pool.use_base()
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    x = torch.randn(6, 3, 8, 8)
    sums, _ = network_fisher(net, layers, [x[:4], x[4:]], precision=precision, class_batch=class_batch)
    return sums


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn])
def test_fisher_precisions_against_fp32(make):
    ref = fisher_at(make, "fp32")
    tf32, bf16 = fisher_at(make, "tf32"), fisher_at(make, "bf16")
    for name, value in ref.items():
        assert value.norm() > 0
        assert rel_err(tf32[name], value) <= 1e-6
        assert bf16[name].dtype == torch.float32
        assert 0 < rel_err(bf16[name], value) <= 3e-2, name  # > 0: bf16 really ran


@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn])
@pytest.mark.parametrize("class_batch", [1, 3])  # one backward per class (a CPU), vmapped classes (CUDA's auto)
def test_bf16x3_fisher_is_fp32_to_about_1e_5(make, class_batch):
    ref, split = fisher_at(make, "fp32"), fisher_at(make, "bf16x3", class_batch)
    for name, value in ref.items():
        assert split[name].dtype == torch.float32
        assert 0 < rel_err(split[name], value) <= 1e-4, name  # > 0: the split ran; bf16 alone is ~1e-2 here


def test_fisher_precision_overrides_the_training_autocast():
    ref = fisher_at(tiny_vit, "fp32")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # -O 2 around begin_task must not leak into an fp32 Fisher
        inside = fisher_at(tiny_vit, "fp32")
    for name in ref:
        assert rel_err(inside[name], ref[name]) <= 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_square_sum_is_the_sum_of_squares_in_fp32(dtype):
    per = torch.randn(9, 5, 7).to(dtype)
    expected = per.float().pow(2).sum(0)
    out = square_sum(per)
    assert out.dtype == torch.float32 and torch.allclose(out, expected, rtol=1e-5, atol=0)


def test_per_sample_squares_equal_a_per_sample_loop():
    x, g = torch.randn(5, 6, 4), torch.randn(5, 6, 3)  # (B, T, I), (B, T, O): T = 6 > the pairwise limit
    expected = sum((g[b].t() @ x[b]).pow(2) for b in range(5))
    assert torch.allclose(per_sample_sq_grads(x, g, False), expected, rtol=1e-5)


def test_auto_batch_size_fits_half_the_free_memory():
    assert auto_batch_size(1e6, 1e9) == 496  # 500 images fit in half of 1 GB, rounded down to a multiple of 8
    assert auto_batch_size(1e9, 1e9) == 8 and auto_batch_size(1.0, 1e12) == 1024


def test_flags(tmp_path):
    import argparse
    args = parse_args(argv_for(tmp_path))
    assert args.fisher_precision == "fp32" and args.stats_batch_size is None  # auto, resolved for the CPU
    for device_type, default in [*DEFAULT_FISHER_PRECISIONS.items(), ("cpu", "fp32"), ("mps", "fp32")]:
        ns = argparse.Namespace(fisher_precision="auto")
        resolve_fisher_precision(ns, device_type)
        assert ns.fisher_precision == default
    assert DEFAULT_FISHER_PRECISIONS == {"cuda": "bf16x3"}  # the measured rule (docs/speed.md)
    ns = argparse.Namespace(fisher_precision="tf32")
    resolve_fisher_precision(ns, "cuda")
    assert ns.fisher_precision == "tf32"  # a given value stays
    args = parse_args(argv_for(tmp_path, "--fisher_precision", "bf16", "--stats_batch_size", "32"))
    assert args.fisher_precision == "bf16" and args.stats_batch_size == 32
