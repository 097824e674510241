"""The fast pre-tuning (stacked heads, vectorised GMM sampling) against the straightforward per-head loops."""
import torch
import torch.nn.functional as F

from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.alignment import align_classifier
from models.second_order_utils.pretuning import DiagonalGMM, StackedGMM, _batches, linear_probe, sample_features


def make_head(sizes, dim=6, seed=0):
    torch.manual_seed(seed)
    head = IncrementalHead(dim, sum(sizes))
    for s in sizes:
        head.add_task(s)
    with torch.no_grad():
        for h in head.heads:
            h.bias.normal_()
    return head


def make_gmms(n_classes, dim=6, comps=(3, 2, 1)):
    gen = torch.Generator().manual_seed(1)
    out = {}
    for c in range(n_classes):
        k = comps[c % len(comps)]
        w = torch.rand(k, generator=gen) + 0.1
        out[c] = DiagonalGMM(w / w.sum(), torch.randn(k, dim, generator=gen) * 3,
                             torch.rand(k, dim, generator=gen) + 0.05)
    return out


def reference_align(head, gmms, epochs, lr, per_class, batch_size, temperature=0.1):
    """The per-head version: SGD on every head's parameters, logits concatenated at every step."""
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    for _ in range(epochs):
        feats, labels = sample_features(gmms, per_class)
        for idx in _batches(len(feats), batch_size):
            z = head.seen_logits(feats[idx])
            z = z / (temperature * (z.norm(dim=1, keepdim=True) + 1e-7))
            loss = F.cross_entropy(z, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()


def reference_probe(head, feats, labels, n_past, epochs, lr, batch_size):
    params = list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(epochs):
        for idx in _batches(len(feats), batch_size):
            logits = head.seen_logits(feats[idx])
            logits[:, :n_past] = float("-inf")
            loss = F.cross_entropy(logits, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def test_stacked_alignment_equals_per_head_sgd():
    gmms = make_gmms(9)
    ours, ref = make_head([3, 2, 4]), make_head([3, 2, 4])
    torch.manual_seed(5)
    align_classifier(ours, gmms, epochs=4, lr=0.5, samples_per_class=7, batch_size=8)
    torch.manual_seed(5)
    reference_align(ref, gmms, epochs=4, lr=0.5, per_class=7, batch_size=8)
    before = make_head([3, 2, 4])
    for a, b, c in zip(ours.parameters(), ref.parameters(), before.parameters()):
        assert not torch.allclose(a, c)  # it did train
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_probe_moves_only_the_new_head_exactly_like_masked_sgd():
    ours, ref = make_head([3, 4]), make_head([3, 4])
    gen = torch.Generator().manual_seed(2)
    feats, labels = torch.randn(30, 6, generator=gen), torch.randint(3, 7, (30,), generator=gen)
    torch.manual_seed(3)
    linear_probe(ours, lambda: (feats, labels), 3, epochs=3, lr=0.3, batch_size=8)
    torch.manual_seed(3)
    reference_probe(ref, feats, labels, 3, epochs=3, lr=0.3, batch_size=8)
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours.heads[0].weight, make_head([3, 4]).heads[0].weight)


def test_stacked_sampling_follows_each_class_mixture():
    gmms = make_gmms(3)
    feats, labels = StackedGMM(gmms).sample(6000, torch.Generator().manual_seed(0))
    assert feats.shape == (18000, 6) and labels.tolist() == [0] * 6000 + [1] * 6000 + [2] * 6000
    for c, g in gmms.items():
        x = feats[labels == c]
        mean = (g.weights[:, None] * g.means).sum(0)
        second = (g.weights[:, None] * (g.variances + g.means ** 2)).sum(0)
        assert torch.allclose(x.mean(0), mean, atol=0.15)
        assert torch.allclose(x.var(0), second - mean ** 2, rtol=0.1, atol=0.1)


def test_stacked_sampling_is_bitwise_the_per_class_component_formula():
    """The in-place gather equals ``means[c, k] + noise * std[c, k]`` drawn with the same generator state (the
    multinomial over components, then the normal noise), classes with fewer components padded."""
    gmms = make_gmms(4)
    stacked = StackedGMM(gmms)
    feats, labels = stacked.sample(11, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    comp = torch.multinomial(stacked.weights, 11, replacement=True, generator=gen)
    noise = torch.randn(4, 11, 6, generator=gen)
    rows = torch.arange(4)[:, None]
    expected = stacked.means[rows, comp] + noise * stacked.std[rows, comp]
    assert torch.equal(feats, expected.reshape(44, 6)) and labels.tolist() == sum(([c] * 11 for c in range(4)), [])
    assert len({len(g.weights) for g in gmms.values()}) > 1   # padding exercised


def test_pairwise_fisher_product_equals_per_sample_gradients():
    from models.second_order_utils.fisher import pairwise_sq_grads
    gen = torch.Generator().manual_seed(0)
    for is_conv, shape_g, shape_x in [(True, (5, 7, 1), (5, 3, 1)), (True, (5, 7, 4), (5, 3, 4)),
                                      (False, (5, 3, 7), (5, 3, 3)), (False, (5, 1, 7), (5, 1, 3))]:
        g, x = torch.randn(*shape_g, generator=gen), torch.randn(*shape_x, generator=gen)
        eq = "bop,bip->boi" if is_conv else "bto,bti->boi"
        expected = torch.einsum(eq, g, x).pow(2).sum(0)
        assert torch.allclose(pairwise_sq_grads(g, x, is_conv), expected, rtol=1e-5, atol=1e-5)
