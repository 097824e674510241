"""fp32 CPU products through oneDNN (utils/onednn_products.py): equal to float64 products, also through autograd
and in the Fisher pass; nothing routed where another dispatch mode or a reduced-precision math mode is active."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from utils import onednn_products
from utils.onednn_products import OneDnnProducts

pytestmark = pytest.mark.skipif(not onednn_products.available(), reason="torch built without oneDNN")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def big(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float32)


@pytest.mark.parametrize("layout", ["plain", "a_t", "b_t", "both_t"])
def test_mm_addmm_equal_float64(layout: str) -> None:
    torch.manual_seed(0)
    m, k, n = 96, 160, 200  # 2 m k n >= MIN_FLOPS
    a = big(k, m).t() if layout in ("a_t", "both_t") else big(m, k)
    b = big(n, k).t() if layout in ("b_t", "both_t") else big(k, n)
    ab = big(5, k, m).transpose(1, 2) if layout in ("a_t", "both_t") else big(5, m, k)
    bb = big(5, n, k).transpose(1, 2) if layout in ("b_t", "both_t") else big(5, k, n)
    bias, bias_row = big(n), big(1, n)
    with OneDnnProducts() as mode:
        outs = [torch.mm(a, b), torch.addmm(bias, a, b), torch.addmm(bias_row, a, b), torch.bmm(ab, bb)]
    assert mode.routed == 3  # bmm stays with torch
    refs = [a.double() @ b.double(), bias.double() + a.double() @ b.double(),
            bias_row.double() + a.double() @ b.double(), ab.double() @ bb.double()]
    for out, ref in zip(outs, refs):
        assert out.dtype == torch.float32 and out.shape == ref.shape and out.is_contiguous()
        assert rel(out, ref) < 1e-6


def test_small_scaled_or_other_products_run_as_they_are() -> None:
    a, b = big(8, 8), big(8, 8)
    with OneDnnProducts() as mode:
        torch.mm(a, b)  # below MIN_FLOPS
        torch.addmm(big(200), big(96, 160), big(160, 200), beta=0.5)  # scaled: not routed
        torch.mm(big(96, 160).double(), big(160, 200).double())  # not fp32
    assert mode.routed == 0


def test_gradients_through_the_mode_equal_autograd() -> None:
    torch.manual_seed(1)
    lin = torch.nn.Linear(160, 200)
    x = big(4, 96, 160).requires_grad_(True)
    w2 = big(4, 200, 120).requires_grad_(True)

    def loss() -> torch.Tensor:
        return (torch.bmm(lin(x), w2).sin()).sum()
    ref = torch.autograd.grad(loss(), [x, w2, lin.weight, lin.bias])
    with OneDnnProducts() as mode:
        got = torch.autograd.grad(loss(), [x, w2, lin.weight, lin.bias])
    assert mode.routed >= 3  # the forward linear; the backward's input and weight products
    for g, r in zip(got, ref):
        assert rel(g, r) < 1e-5


@pytest.mark.parametrize("o,i", [(200, 96), (96, 200)])
def test_square_sums_equal_per_sample_reference(o: int, i: int) -> None:
    torch.manual_seed(2)
    g, x = big(6, 37, o), big(6, 37, i)
    ref = sum((g[b].double().t() @ x[b].double()) ** 2 for b in range(6))
    out = onednn_products.square_sums(g, x)
    assert out.shape == (o, i) and rel(out, ref) < 1e-6
    x_t = onednn_products.transposed_tokens(x)  # made once per forward, kept for every class backward
    assert x_t.shape == (6, i, 37) and x_t.is_contiguous()
    assert torch.equal(onednn_products.square_sums(g, x, x_t), out)


def test_not_routed_under_another_mode_or_reduced_math() -> None:
    assert isinstance(onednn_products.products_on(torch.device("cpu")), OneDnnProducts)
    assert onednn_products.products_on(torch.device("meta")) is None
    with FlopCounterMode(display=False):  # a counter must see torch's own products
        assert onednn_products.products_on(torch.device("cpu")) is None
    with OneDnnProducts():
        assert onednn_products.active()
        with FlopCounterMode(display=False):
            assert not onednn_products.active()
    assert not onednn_products.active()
    saved = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        assert not onednn_products.available() and onednn_products.products_on(torch.device("cpu")) is None
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = saved
    assert onednn_products.available()


def test_fisher_pass_routes_and_equals_the_blas_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    timm = pytest.importorskip("timm")
    from models.second_order_utils import fisher
    from models.second_order_utils.fisher import network_fisher
    from models.second_order_utils.modules import inject_adapters
    torch.manual_seed(3)
    net = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=8, embed_dim=160, depth=2,
                                                           num_heads=2, num_classes=5)
    net.eval().requires_grad_(False)
    layers = inject_adapters(net, "lora", 4)
    assert fisher.routes_products(layers)  # qkv: 160 x 480 weights
    tiny = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1,
                                                            num_heads=2, num_classes=5)
    assert not fisher.routes_products(inject_adapters(tiny, "lora", 2))  # Python per op would cost more
    images = torch.randn(3, 3, 64, 64)
    calls = {"square_sums": 0, "linear": 0, "transposed_tokens": 0}
    square_sums, linear = onednn_products.square_sums, onednn_products.linear
    transposed = onednn_products.transposed_tokens

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper
    monkeypatch.setattr(onednn_products, "square_sums", counted("square_sums", square_sums))
    monkeypatch.setattr(onednn_products, "linear", counted("linear", linear))
    monkeypatch.setattr(onednn_products, "transposed_tokens", counted("transposed_tokens", transposed))
    routed, n = network_fisher(net, layers, [images])
    # (5 - 1) class passes x (4 adapted layers of the first block + the last block's qkv: its proj, fc1 and fc2 see
    # the class token alone, one position: the pairwise product)
    assert calls["square_sums"] == 4 * (4 + 1)
    assert calls["transposed_tokens"] == 4 + 1  # each layer's inputs transposed once for the 4 class passes
    assert calls["linear"] > calls["square_sums"] * 3  # and the forward, input-gradient and attention products
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    blas, _ = network_fisher(net, layers, [images])
    assert n == 3 and set(routed) == set(blas)
    for name in blas:
        assert rel(routed[name], blas[name]) < 1e-5


def test_cpu_products_benchmark_reports_both_sides(tmp_path) -> None:
    import json

    from benchmarks import cpu_products
    out = tmp_path / "products.json"
    assert cpu_products.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["product"] for r in rows] == ["qkv forward", "qkv input gradient", "attention backward",
                                            "qkv per-sample squares"]
    for r in rows:
        assert r["width"] == 192 and max(r["rel_err"].values()) < 1e-5
        assert r["speedup"] == pytest.approx(r["seconds"]["torch"] / r["seconds"]["onednn"])


@pytest.mark.parametrize("queries", [1, 20])
def test_attention_backward_under_the_mode_equals_float64_autograd(queries: int) -> None:
    from models.second_order_utils.fisher_ops import ONEDNN_MIN_QUERIES, attention_kept_probs
    torch.manual_seed(4)
    qkv = big(2, 20, 3, 3, 16).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d) strided as a ViT's qkv split
    q, k, v = (t.clone().requires_grad_(True) for t in (qkv[0][:, :, :queries], qkv[1], qkv[2]))
    grad = big(2, queries, 3, 16).transpose(1, 2)  # the output's gradient, strided as after the head merge
    ref = torch.autograd.grad(torch.softmax(q.double() @ k.double().transpose(-2, -1) * 0.25, -1) @ v.double(),
                              [q, k, v], grad.double())
    calls = []
    attention_grads = onednn_products.attention_grads

    def spy(*args):
        calls.append(args[0].shape)
        return attention_grads(*args)
    onednn_products.attention_grads = spy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the per-(image, head) products serve one thread
    try:
        with OneDnnProducts():
            got = torch.autograd.grad(attention_kept_probs(q, k, v, scale=0.25), [q, k, v], grad)
        torch.set_num_threads(2)
        with OneDnnProducts():
            two = torch.autograd.grad(attention_kept_probs(q, k, v, scale=0.25), [q, k, v], grad)
    finally:
        onednn_products.attention_grads = attention_grads
        torch.set_num_threads(threads)
    assert len(calls) == (queries >= ONEDNN_MIN_QUERIES)  # per (image, head) loops: many queries, one thread
    for g, t, r in zip(got, two, ref):
        assert g.shape == t.shape == r.shape and rel(g, r) < 1e-6 and rel(t, r) < 1e-6
