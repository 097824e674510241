"""The exact Fisher's savings: C - 1 backward passes of a factor of diag(p) - p p^T (fisher_exact.py) and a
class-token ViT's last block run for the class token alone (fisher_vit.py), against brute force."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from models.second_order_utils.fisher import network_fisher
from models.second_order_utils.fisher_exact import exact_scores, logit_fisher_factor
from models.second_order_utils.fisher_vit import ClsOnlyLastBlock, eligible_block
from models.second_order_utils.modules import inject_adapters
from tests.test_second_order_math import brute_force_fisher as brute_force


def rel_err(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


def vit(**kwargs):
    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=5, **kwargs)
    net.eval().requires_grad_(False)
    return net


@pytest.mark.parametrize("probs", [
    torch.softmax(torch.randn(6, 7, dtype=torch.float64) * 3, dim=1),
    torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64),  # one-hot, zeros
    torch.tensor([[0.5, 0.5]], dtype=torch.float64),
])
def test_factor_times_its_transpose_is_the_logits_fisher(probs):
    factor = logit_fisher_factor(probs)
    n, c = probs.shape
    assert factor.shape == (n, c, c - 1)
    expected = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    assert torch.allclose(factor @ factor.transpose(1, 2), expected, atol=1e-14)
    assert torch.allclose(factor.sum(1), torch.zeros(n, c - 1, dtype=torch.float64), atol=1e-14)  # columns sum to 0


def test_exact_scores_have_the_per_class_gradients_squares():
    """sum_j (d score_j / dz)^2 outer products = sum_c p_c (d log p_c / dz)(...)^T for a whole batch."""
    z = (torch.randn(4, 6, dtype=torch.float64) * 4).requires_grad_(True)
    logp = F.log_softmax(z, dim=1)
    scores = exact_scores(logp, logp.detach().exp())
    assert len(scores) == 5
    got = sum(torch.einsum("bi,bj->bij", g, g) for g in
              (torch.autograd.grad(s, z, retain_graph=True)[0] for s in scores))
    want = 0
    for c in range(6):
        g = torch.autograd.grad(logp[:, c].sum(), z, retain_graph=True)[0]
        want = want + logp[:, c].exp().detach()[:, None, None] * torch.einsum("bi,bj->bij", g, g)
    assert torch.allclose(got, want, atol=1e-12)


def test_classes_of_zero_probability_are_left_out_and_the_fisher_is_unchanged():
    net = vit()
    with torch.no_grad():
        net.head.bias[3:] = -1e4  # classes 3 and 4: probability exactly 0 in fp32 for every image
    layers = inject_adapters(net, "lora", 2)
    x = torch.randn(3, 3, 32, 32)
    with mock.patch.object(torch.autograd, "grad", wraps=torch.autograd.grad) as grad:
        sums, n = network_fisher(net, layers, [x], class_batch=1)
    assert n == 3 and grad.call_count == 2  # 3 classes of non-zero probability: 2 backward passes (not 5)
    assert rel_err(sums, brute_force(net, layers, x)) <= 1e-4


def test_class_token_last_block_gives_the_same_output_and_is_restored():
    net = vit()
    block = net.blocks[-1]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    with ClsOnlyLastBlock() as mode:
        out = net(x)  # grad enabled: the Fisher's forward
        with torch.no_grad():
            net(x)  # not under no_grad
    assert mode.calls == 1 and "forward" not in block.__dict__
    assert torch.allclose(out, ref, atol=1e-5)
    seen = []
    hook = block.mlp.fc2.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    with ClsOnlyLastBlock():
        net(x)
    net(x)
    hook.remove()
    assert seen == [1, 17]  # one token under the mode; the 16 patches and the class token after it


@pytest.mark.parametrize("kwargs", [{"qk_norm": True}, {"init_values": 0.1}, {"reg_tokens": 2}])
def test_class_token_last_block_variants_equal_the_full_block(kwargs):
    net = vit(**kwargs)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    with ClsOnlyLastBlock() as mode:
        out = net(x)
    assert mode.calls == 1 and torch.allclose(out, ref, atol=1e-5)


def test_not_applied_where_other_tokens_matter_or_dropout_draws():
    assert eligible_block(vit(global_pool="avg")) is None  # the mean over tokens needs every row
    assert eligible_block(torch.nn.Linear(2, 2)) is None
    dropping = vit(proj_drop_rate=0.1)
    assert eligible_block(dropping) is not None  # eval mode: no random numbers
    dropping.train()
    assert eligible_block(dropping) is None
    net = vit()
    x = torch.randn(2, 3, 32, 32)
    with ClsOnlyLastBlock() as mode:
        net.forward_features(x)  # every token's output requested: not the whole network's call
    assert mode.calls == 0


@pytest.mark.parametrize("class_batch", [1, 4])
def test_vit_fisher_with_both_savings_equals_the_brute_force(class_batch):
    net = vit(qk_norm=True)
    layers = inject_adapters(net, "lora", 2)
    x = torch.randn(3, 3, 32, 32)
    sums, n = network_fisher(net, layers, [x[:2], x[2:]], class_batch=class_batch)
    assert n == 3
    assert rel_err(sums, brute_force(net, layers, x)) <= 1e-4


def test_the_projects_vit_backbone_gets_the_class_token_block_through_a_wrapping_forward():
    from backbone.vit import vit_tiny
    torch.manual_seed(0)
    net = vit_tiny(num_classes=4, img_size=16, embed_dim=16, depth=2, num_heads=2)
    net.eval().requires_grad_(False)
    layers = inject_adapters(net.body, "lora", 2)
    seen = []
    hook = net.body.blocks[-1].mlp.fc2.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    x = torch.randn(3, 3, 16, 16)
    sums, _ = network_fisher(lambda z: net.classifier(net.features(z)), layers, [x])  # as the model calls it
    hook.remove()
    assert seen == [1]  # the last block ran for the class token alone
    assert rel_err(sums, brute_force(net, layers, x)) <= 1e-4


@pytest.mark.parametrize("class_batch", [1, 3])
def test_one_class_has_a_zero_fisher_and_needs_no_backward(class_batch):
    net = vit()
    layers = inject_adapters(net, "lora", 2)
    sums, n = network_fisher(lambda z: net(z)[:, :1], layers, [torch.randn(2, 3, 32, 32)], class_batch=class_batch)
    assert n == 2 and all(float(v.abs().max()) == 0.0 for v in sums.values())


def test_fp32_factor_keeps_the_logits_fisher_to_fp32_rounding():
    logits = torch.randn(64, 100) * 6
    probs = torch.softmax(logits, dim=1)
    factor = logit_fisher_factor(probs)
    assert factor.dtype == torch.float32
    p = torch.softmax(logits.double(), dim=1)
    expected = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    err = (factor.double() @ factor.double().transpose(1, 2) - expected).abs().amax((1, 2)) / p.amax(1)
    assert float(err.max()) < 1e-6
