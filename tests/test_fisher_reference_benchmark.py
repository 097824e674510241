"""benchmarks/fisher_reference.py on a tiny ViT: the reference implementation's Fisher (from the Mammoth snapshot,
in its own process) and this project's agree, and the report has both sides' times, FLOPs and the GPU projection."""
import json
import os

import pytest

from benchmarks import fisher_reference
from tests.conftest import shared_missing


def test_reference_and_ours_agree_on_a_tiny_vit(tmp_path):
    if not os.path.isfile(fisher_reference.DEFAULT_MAMMOTH):
        shared_missing(fisher_reference.DEFAULT_MAMMOTH)
    out = tmp_path / "ref.json"
    code = fisher_reference.main(["--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--img_size", "48",
                                  "--images", "4", "--classes", "3", "--repeats", "1", "--out", str(out)])
    res = json.loads(out.read_text())
    assert code == 0 and res["max_rel_err"] < 1e-4 and res["tokens"] == 10
    for side in ("reference", "ours"):
        flops, kernels, squared = res["flops_kernels_squared"][side]
        assert flops > 0 and kernels > 0 and res["seconds"][side][0] > 0 and res["cpu_seconds"][side][0] > 0
    # the per-sample products squared. The reference: images x classes x the 4 adapted layers' O*I (12 d^2).
    assert res["flops_kernels_squared"]["reference"][2] == 4 * 3 * 12 * 32 ** 2
    # ours: images x (classes - 1) x the qkv's O*I (3 d^2): the one block is the last, whose proj, fc1 and fc2
    # see the class token alone (their squares come from one matrix product, no per-sample tensor); the same
    # elements as on CUDA (the "norm" form, the classes in one vmapped backward, with fewer kernels)
    assert res["flops_kernels_squared"]["ours"][2] == res["gpu_flops_kernels_squared"]["ours"][2] == 4 * 2 * 3 * 32 ** 2
    assert res["gpu_flops_kernels_squared"]["ours"][1] < res["flops_kernels_squared"]["ours"][1]
    assert res["flops_kernels_squared"]["ours"][0] < res["flops_kernels_squared"]["reference"][0]
    assert res["ratio"] == pytest.approx(res["best_seconds"]["reference"] / res["best_seconds"]["ours"])
    assert res["best_seconds"]["ours"] == min(res["cpu_seconds"]["ours"])
    # the same pass with torch's BLAS: timed, not counted (the same operations)
    assert res["cpu_seconds"]["ours_blas"][0] > 0 and res["flops_kernels_squared"]["ours_blas"] is None
    assert res["ratio_blas"] == pytest.approx(res["best_seconds"]["reference"] / res["best_seconds"]["ours_blas"])
    assert set(res["projected_h100_seconds"]) == {"reference", "ours"}
    vit_b = res["projected_h100_seconds_vit_b"]
    # FLOP-bound at ViT-B/16, 1.19x fewer FLOPs; ours on CUDA in bf16x3 (three bf16 products: a fifth of fp32's time
    # per FLOP) with the fused square-and-sum, the reference in fp32 with 16 bytes per squared product element
    assert res["ours_gpu_precision"] == "bf16x3"
    assert 3.0 < vit_b["reference"] / vit_b["ours"] < 8.0  # (here the launches of a 1-block model weigh)


def test_vit_b_projection_follows_the_flop_formulas(monkeypatch):
    from benchmarks.phases import GPUS, UTILISATION, vit_flops
    none = {"reference": 0.0, "ours": 0.0}
    one, two = (fisher_reference.project_vit_b(n, 10, none, 2, "fp32") for n in (1, 2))
    assert two["ours"] == pytest.approx(2 * one["ours"]) and two["reference"] == pytest.approx(2 * one["reference"])
    v = vit_flops(768, 12, 197, 196)
    gemm = (v["forward"] + 9 * v["fisher_direction"]) / (UTILISATION * GPUS["h100"]["fp32"])
    assert one["ours"] == pytest.approx(gemm)  # fused square-and-sum (triton installed): the products never stored
    split = fisher_reference.project_vit_b(1, 10, none, 2, "bf16x3")["ours"]
    assert split == pytest.approx(gemm * 3 * GPUS["h100"]["fp32"] / GPUS["h100"]["bf16"])  # 3 bf16 products a FLOP
    monkeypatch.setattr(fisher_reference, "ours_square_bytes", lambda: 8)  # the unfused "norm" form
    unfused = fisher_reference.project_vit_b(1, 10, none, 2, "fp32")
    assert gemm < unfused["ours"] < 1.2 * gemm  # its square-and-sum bytes add less than a fifth
    kernels = fisher_reference.project_vit_b(1, 10, {"reference": 100.0, "ours": 10.0}, 2, "fp32")
    assert kernels["ours"] - unfused["ours"] == pytest.approx(10 * 6 * 5e-6)  # 12 blocks / 2: 6x the kernels


def test_fused_attention_is_counted_like_its_products():
    """torch's FLOP counter skips the CPU's fused attention: the benchmark adds q k^T and p v (forward) and the
    backward's 5 products (q k^T recomputed), the same count the kept-probabilities attention gets from its matmuls
    (less the one recomputation)."""
    import torch
    import torch.nn.functional as F

    from models.second_order_utils.fisher_ops import attention_kept_probs
    b, h, t, d = 2, 3, 10, 8
    q = torch.randn(b, h, t, d, requires_grad=True)
    fused, kernels, _ = fisher_reference.count_flops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    assert fused == (4 + 10) * b * h * t * t * d and kernels > 0
    kept, _, _ = fisher_reference.count_flops(lambda: attention_kept_probs(q, q, q).sum().backward())
    assert kept == fused - 2 * b * h * t * t * d
