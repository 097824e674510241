"""models/second_order_utils/fisher_ops.py: the reused-backward activations and attention give autograd's gradients
(several backwards through one forward, as the Fisher's class loop does), and the Fisher with them equals the
per-sample brute force."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.second_order_utils.fisher_ops import ReusedBackward


def grads_through(fn, inputs, n_backwards=3, mode=False):
    out = []
    ctx = ReusedBackward() if mode else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)
    with ctx as m:
        y = fn(*inputs)
    g = torch.Generator().manual_seed(1)
    for i in range(n_backwards):
        up = torch.randn(y.shape, generator=g)
        out.append(torch.autograd.grad(y, inputs, up, retain_graph=i < n_backwards - 1))
    return y, out, m


@pytest.mark.parametrize("name, fn, swapped", [
    ("gelu", lambda x: nn.GELU()(x), 1),
    ("silu", lambda x: F.silu(x), 1),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), 0),  # not covered: runs as it is
])
def test_activation_values_and_gradients_equal_autograd(name, fn, swapped):
    x = (torch.randn(4, 7, 9) * 3).requires_grad_(True)
    y_ref, g_ref, _ = grads_through(fn, (x,))
    y, g, mode = grads_through(fn, (x,), mode=True)
    assert mode.swapped == swapped
    assert torch.allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


def test_attention_values_and_gradients_equal_autograd():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 11, 8, generator=gen).requires_grad_(True) for _ in range(3))

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)
    y_ref, g_ref, _ = grads_through(attend, (q, k, v))
    y, g, mode = grads_through(attend, (q, k, v), mode=True)
    assert mode.swapped == 1
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g, g_ref):
        for ga, gb in zip(a, b):
            assert torch.allclose(ga, gb, rtol=1e-4, atol=1e-5)
    # a mask is not covered
    with ReusedBackward() as m:
        F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(11, 11, dtype=torch.bool))
    assert m.swapped == 0


def test_vit_fisher_with_reused_backwards_equals_the_brute_force():
    from timm.models.vision_transformer import VisionTransformer

    from models.second_order_utils.fisher import network_fisher
    from models.second_order_utils.modules import inject_adapters
    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, num_classes=4)
    net.eval().requires_grad_(False)
    layers = inject_adapters(net, "lora", 2)
    x = torch.randn(3, 3, 32, 32)
    sums, n = network_fisher(net, layers, [x], class_batch=1)
    assert n == 3
    # brute force: per sample and class, autograd of log p_c wrt the dense weights, squared, weighted by p_c
    weights = {name: layer.base.weight for name, layer in layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    expected = {name: torch.zeros_like(w) for name, w in weights.items()}
    for b in range(3):
        logp = F.log_softmax(net(x[b:b + 1]), dim=1)[0]
        for c in range(4):
            gs = torch.autograd.grad(logp[c], list(weights.values()), retain_graph=True)
            for (name, _), gr in zip(weights.items(), gs):
                expected[name] += logp[c].exp().detach() * gr ** 2
    for name in layers:
        err = (sums[name] - expected[name]).norm() / expected[name].norm()
        assert err < 1e-4, (name, float(err))
