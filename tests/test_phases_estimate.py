"""benchmarks/phases.py --estimate: the ViT FLOP formulas against torch's FLOP counter on a small ViT, and the
run-time model's arithmetic."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import phases


def small_vit(classes=0):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    net = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=classes)
    return net.eval().requires_grad_(False)


def counted(fn):
    with FlopCounterMode(display=False) as c:
        fn()
    return c.get_total_flops()


def test_forward_flops_equal_the_counter():
    net = small_vit()
    v = phases.vit_flops(32, 2, 17, 16)
    # torch's counter has no rule for the CPU's fused attention kernel: everything else is counted
    assert counted(lambda: net(torch.randn(1, 3, 64, 64))) == v["forward"] - v["attention"]
    assert v["attention"] == 2 * 4 * 17 ** 2 * 32  # q k^T and p v, 2 FLOPs per multiply-add, per block


def test_one_backward_pass_of_the_fisher_matches_the_formula():
    from models.second_order_utils.fisher import network_fisher
    from models.second_order_utils.modules import inject_adapters
    net = small_vit(classes=3)
    layers = inject_adapters(net, "lora", 2)
    x = torch.randn(2, 3, 64, 64)
    flops = {}
    for k in (1, 2):
        flops[k] = counted(lambda: network_fisher(lambda z: net(z)[:, :k + 1], layers, [x], class_batch=1))
    per_pass = (flops[2] - flops[1]) / 2  # per image: 3 classes, 2 backward passes, against 2 classes, 1 pass
    v = phases.vit_flops(32, 2, 17, 16)
    assert per_pass == pytest.approx(v["fisher_direction"], rel=0.03)  # the head's small products are left out
    assert v["fisher_direction"] < 0.7 * v["fisher_class"]  # the last block's class-token-only backward


def test_estimate_adds_up_and_follows_the_precision_peaks():
    fp32 = phases.estimate("h100", "fp32", "fp32")
    fast = phases.estimate("h100", "tf32", "bf16")
    assert fp32["flops"] == fast["flops"]
    peak = phases.GPUS["h100"]
    assert fast["seconds"]["training"] == pytest.approx(fp32["seconds"]["training"] * peak["fp32"] / peak["bf16"])
    gemm = fp32["flops"]["fisher"] / (phases.UTILISATION * peak["fp32"])
    memory = fp32["fisher_square_sum_bytes"] / (phases.BANDWIDTH_UTILISATION * peak["bytes_per_s"])
    assert fp32["seconds"]["fisher"] == pytest.approx(gemm + memory)
    assert fp32["total_seconds"] == pytest.approx(sum(fp32["seconds"].values()))
    p = phases.PUBLISHED
    assert fp32["loader_images"] == p["tasks"] * p["train_per_task"] * (2 + p["epochs"]) + \
        p["test_per_task"] * p["tasks"] * (p["tasks"] + 1) // 2
    # the Fisher grows with the seen classes: 9 + 19 + ... + 99 backward passes per image (C - 1 for C classes)
    v = phases.vit_flops(768, 12, 197, 196)
    assert fp32["flops"]["fisher"] == pytest.approx(p["train_per_task"] * (10 * v["forward"] + 540 * v["fisher_direction"]))


def test_bf16x3_counts_three_bf16_products_and_the_fused_form_no_product_bytes():
    peak = phases.GPUS["h100"]
    norm = phases.estimate("h100", "bf16x3", "tf32", square_sum="norm")
    fused = phases.estimate("h100", "bf16x3", "tf32", square_sum="fused")
    gemm = norm["flops"]["fisher"] / (phases.UTILISATION * peak["bf16"] / 3)
    bandwidth = phases.BANDWIDTH_UTILISATION * peak["bytes_per_s"]
    assert norm["seconds"]["fisher"] == pytest.approx(gemm + norm["fisher_square_sum_bytes"] / bandwidth)
    assert fused["fisher_square_sum_bytes"] == 0 and fused["seconds"]["fisher"] == pytest.approx(gemm)
    # the fused kernel's operand reads: every pass reads each layer's (T, O) gradients and (T, I) inputs once
    p = phases.PUBLISHED
    passes = p["train_per_task"] * sum(10 * t - 1 for t in range(1, p["tasks"] + 1))
    assert fused["fisher_operand_bytes"] == pytest.approx(passes * p["depth"] * p["tokens"] * 16 * p["dim"] * 4)
    assert fused["serial_total_seconds"] == pytest.approx(fused["total_seconds"]
                                                          + fused["fisher_operand_bytes"] / bandwidth)
    assert fused["fisher_operand_bytes"] < norm["fisher_square_sum_bytes"] / 5
    with pytest.raises(ValueError, match="square-sum form"):
        phases.estimate("h100", "fp32", "fp32", square_sum="inplace")


def test_estimate_cli_prints_the_cuda_defaults(capsys):
    assert phases.main(["--estimate", "h100"]) == 0
    out = capsys.readouterr().out
    assert "default on CUDA (Fisher bf16x3, training tf32, square-and-sum fused)" in out
    total = phases.estimate("h100", "bf16x3", "tf32", square_sum="fused")["total_seconds"]
    assert f"{total:9.0f}   = {total / 60:.0f} min" in out and round(total / 60) == 29
