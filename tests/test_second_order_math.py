"""second_order numerics against brute-force references: penalties, chain rules, Fisher, GMM, composition."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from backbone import ContinualBackbone
from models.second_order_utils import penalties as pen
from models.second_order_utils.fisher import head_fisher, network_fisher
from models.second_order_utils.modules import ModulePool, inject_adapters, uniform_weights
from models.second_order_utils.gmm import fit_gmm
from models.second_order_utils.pretuning import StackedGMM


def gmm_log_likelihood(x, weights, means, variances):
    """Reference: log sum_k pi_k N(x; mu_k, diag sigma_k^2) = logsumexp_k [log pi_k - 1/2 sum_d (log(2 pi sigma^2)
    + (x - mu)^2 / sigma^2)]."""
    diff2 = (x[:, None, :] - means[None]).pow(2) / variances[None]
    comp = -0.5 * (diff2.sum(-1) + torch.log(variances).sum(-1)[None] + means.shape[1] * np.log(2 * np.pi))
    return torch.logsumexp(comp + torch.log(weights)[None], dim=1)


def omega(task_vectors, weights, fisher):
    """Theorem 1 gap: 1/2 sum_t w_t (tau_t - tau_bar)^T diag(F) (tau_t - tau_bar)."""
    mean = sum(w * tau for w, tau in zip(weights, task_vectors))
    return 0.5 * sum(w * (fisher * (tau - mean).pow(2)).sum() for w, tau in zip(weights, task_vectors))


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    body = VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2, num_classes=0,
                             global_pool="token")
    return ContinualBackbone(body, 16, 5).eval()


class TinyCNN(nn.Module):
    """conv3x3 -> BN -> pointwise conv (stride 2) -> pool -> linear: the CNN adapter targets."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.pw, self.fc = nn.Conv2d(6, 8, 1, stride=2), nn.Linear(8, 7)

    def forward(self, x):
        h = self.pw(F.relu(self.bn(self.stem(x))))
        return self.fc(h.mean((2, 3)))


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    net = ContinualBackbone(TinyCNN(), 7, 5).eval()
    net.body.bn.running_mean.uniform_(-0.2, 0.2)
    return net


def randomize(pool, n_tasks, scale=0.3):
    for _ in range(n_tasks):
        pool.add_task()
    with torch.no_grad():
        for layer in pool.layers.values():
            for d in layer.deltas:
                for p in d.parameters():
                    p.add_(scale * torch.randn_like(p))


# ----- penalties ------------------------------------------------------------------------------------
def test_ita_and_iel_gradients_equal_autograd():
    torch.manual_seed(0)
    delta, past, fisher = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4), torch.rand(5, 4)
    (g_ita,) = torch.autograd.grad(pen.ita_penalty(delta, fisher, 0.7), delta)
    assert torch.allclose(g_ita, pen.ita_penalty_grad(delta.detach(), fisher, 0.7), atol=1e-6)
    for ratio in (0.5, 1 / 3):
        (g_iel,) = torch.autograd.grad(pen.iel_penalty(delta, past, fisher, 2.5, ratio), delta)
        assert torch.allclose(g_iel, pen.iel_penalty_grad(delta.detach(), past, fisher, 2.5, ratio), atol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 4])
def test_iel_gradient_is_beta_over_w_times_omega_gradient(t):
    torch.manual_seed(t)
    fisher, beta = torch.rand(6, 3), 3.0
    taus = [torch.randn(6, 3) for _ in range(t)] + [torch.randn(6, 3, requires_grad=True)]
    w = 1.0 / (t + 1)
    (g_omega,) = torch.autograd.grad(omega(taus, [w] * (t + 1), fisher), taus[-1])
    closed = pen.iel_penalty_grad(taus[-1].detach(), sum(taus[:-1]), fisher, beta, pen.iel_ratio(t))
    assert torch.allclose(closed, beta / w * g_omega, rtol=1e-5, atol=1e-6)


def test_ita_fisher_bookkeeping():
    past, like = torch.full((2, 2), 4.0), torch.zeros(2, 2)
    assert torch.allclose(pen.ita_fisher(past, 8, like), (1e-5 + past) / 8)
    assert torch.allclose(pen.ita_fisher(None, 0, like), torch.full((2, 2), 1e-5))
    assert torch.allclose(pen.iel_fisher(past, 4), 1e-5 + past / 4)
    assert pen.iel_ratio(0) == 0.5 and pen.iel_ratio(3) == 0.25
    assert [round(pen.lr_factor(e, 5), 3) for e in range(5)] == [1.0, 0.925, 0.713, 0.394, 0.016]


@pytest.mark.parametrize("style", ["lora", "full", "ia3"])
def test_module_chain_rule_equals_autograd(style):
    net = tiny_vit()
    pool = ModulePool(inject_adapters(net.body, style, rank=2))
    randomize(pool, 1)
    for layer in pool.layers.values():
        module, G = layer.deltas[0], torch.randn(layer.d_out, layer.d_in)
        params = list(module.parameters())
        auto = torch.autograd.grad((G * module.delta(layer.w0)).sum(), params)
        for a, b in zip(auto, module.grads_from_dense(G, layer.w0)):
            assert torch.allclose(a, b, atol=1e-5)
            assert all(b.data_ptr() != p.data_ptr() for p in params)  # D1: fresh storage


def test_vit_targets_and_ranks():
    net = tiny_vit()
    layers = inject_adapters(net.body, "lora", rank=2)
    assert sorted(layers) == ["blocks.0.attn.proj", "blocks.0.attn.qkv", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    pool = ModulePool(layers)
    pool.add_task()
    assert layers["blocks.0.attn.qkv"].deltas[0].A.shape == (6, 16)
    bound = 1 / np.sqrt(2 * 16)
    assert layers["blocks.0.mlp.fc1"].deltas[0].A.abs().max() <= bound
    assert float(layers["blocks.0.mlp.fc1"].deltas[0].A.detach().abs().max()) > 0.5 * bound


# ----- forward, merge, composition ------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn])
def test_lora_with_zero_b_leaves_outputs_unchanged(make):
    net = make()
    x = torch.randn(3, 3, 8, 8)
    ref = net(x)
    pool = ModulePool(inject_adapters(net.body, "lora", rank=2))
    pool.add_task()
    pool.train_individual(0)
    assert torch.allclose(net(x), ref, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn])
@pytest.mark.parametrize("style", ["lora", "full", "ia3"])
def test_merged_equals_unmerged_and_the_average_of_task_vectors(make, style):
    net = make()
    original = copy.deepcopy(net)
    x = torch.randn(3, 3, 8, 8)
    pool = ModulePool(inject_adapters(net.body, style, rank=2))
    randomize(pool, 3)
    pool.train_individual(1)
    unmerged = net(x)
    pool.compose([0.0, 1.0, 0.0])
    assert torch.allclose(net(x), unmerged, atol=1e-5)
    pool.train_ensemble(2, {n: pool.weighted_sum(n, [1.0, 1.0]) for n in pool.layers})
    unmerged = net(x)
    pool.compose(uniform_weights(3))
    merged = net(x)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    with torch.no_grad():  # reference: the plain network with W0 + mean_t dW_t written into its weights
        for name, layer in pool.layers.items():
            mean = sum(layer.dense_delta(t) for t in range(3)) / 3
            ref_layer = original.body.get_submodule(name)
            ref_layer.weight.add_(mean.view_as(ref_layer.weight))
    assert torch.allclose(merged, original(x), atol=1e-5)
    pool.use_base()  # W0 was never modified: theta0 is recovered exactly
    assert torch.equal(net(x), make()(x))


# ----- Fisher ---------------------------------------------------------------------------------------
def brute_force_fisher(net, layers, x):
    """sum_b sum_c p_c (d log p_c / dW)^2 with one autograd call per sample and class."""
    weights = {n: l.base.weight for n, l in layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    out = {n: torch.zeros_like(w) for n, w in weights.items()}
    for b in range(x.shape[0]):
        logp = F.log_softmax(net(x[b:b + 1]), dim=1)[0]
        for c in range(logp.shape[0]):
            grads = torch.autograd.grad(logp[c], list(weights.values()), retain_graph=True)
            for (n, _), g in zip(weights.items(), grads):
                out[n] += logp[c].exp().detach() * g.pow(2)
    for w in weights.values():
        w.requires_grad_(False)
    return {n: v.view(layers[n].d_out, layers[n].d_in) for n, v in out.items()}


@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn])
@pytest.mark.parametrize("style", ["lora", "full", "ia3"])
def test_exact_fisher_equals_per_sample_per_class_loop(make, style):
    net = make()
    layers = inject_adapters(net.body, style, rank=2)
    pool = ModulePool(layers)
    randomize(pool, 1)
    pool.use_base()  # the Fisher is taken at theta0, whatever modules exist
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(7, 3, 8, 8)
    ref = brute_force_fisher(net, layers, x)
    for batch in (7, 3):  # independent of the batch size
        sums, n = network_fisher(net, layers, [x[i:i + batch] for i in range(0, 7, batch)])
        assert n == 7
        for name in ref:
            err = (sums[name] - ref[name]).norm() / ref[name].norm()
            assert err <= 1e-4, (name, float(err))


def test_top_k_fisher_is_cheaper_and_close():
    net = tiny_vit()
    layers = inject_adapters(net.body, "lora", rank=2)
    for p in net.parameters():
        p.requires_grad_(False)
    x = torch.randn(6, 3, 8, 8)
    calls = []
    original = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    torch.autograd.grad = counting_grad
    try:
        exact, _ = network_fisher(net, layers, [x])
        n_exact = len(calls)
        approx, _ = network_fisher(net, layers, [x], mc_classes=2)
    finally:
        torch.autograd.grad = original
    n_classes = net(x).shape[1]
    # the cost: C - 1 backward passes for the exact Fisher (fisher_exact.py), one per class kept for top-k
    assert (n_exact, len(calls) - n_exact) == (n_classes - 1, 2)
    assert n_classes > 2
    for name in exact:
        assert torch.all(approx[name] <= exact[name] + 1e-6) and approx[name].sum() > 0.2 * exact[name].sum()


def test_head_fisher_closed_form_equals_loop():
    torch.manual_seed(0)
    head = nn.Linear(4, 6)
    feats = torch.randn(5, 4)
    rows = slice(2, 5)
    fw, fb = head_fisher(feats, head(feats), rows)
    ref_w, ref_b = torch.zeros_like(head.weight), torch.zeros_like(head.bias)
    for b in range(5):
        logp = F.log_softmax(head(feats[b:b + 1]), dim=1)[0]
        for c in range(6):
            gw, gb = torch.autograd.grad(logp[c], [head.weight, head.bias], retain_graph=True)
            ref_w += logp[c].exp().detach() * gw.pow(2)
            ref_b += logp[c].exp().detach() * gb.pow(2)
    assert torch.allclose(fw, ref_w[rows], rtol=1e-4, atol=1e-7)
    assert torch.allclose(fb, ref_b[rows], rtol=1e-4, atol=1e-7)


# ----- GMM ------------------------------------------------------------------------------------------
def test_gmm_recovers_known_means_and_likelihood_is_standard():
    from sklearn.mixture import GaussianMixture
    rng = np.random.RandomState(0)
    means = np.array([[5.0, 0.0, -3.0], [-4.0, 2.0, 1.0]])
    x = np.concatenate([m + rng.randn(150, 3) * [0.5, 1.0, 0.3] for m in means])
    gmm = fit_gmm(x, n_components=2, seed=0, kmeans_inits=2)
    found = gmm.means.numpy()[np.argsort(gmm.means.numpy()[:, 0])[::-1]]
    empirical = np.stack([x[:150].mean(0), x[150:].mean(0)])  # the true means up to sampling noise
    assert np.allclose(found, empirical, atol=0.02) and np.allclose(found, means, atol=0.3)
    assert np.allclose(sorted(gmm.weights.tolist()), [0.5, 0.5], atol=0.01)
    ref = GaussianMixture(2, covariance_type="diag", random_state=0).fit(x)
    pts = torch.tensor(x[:20], dtype=torch.float32)
    ours = gmm_log_likelihood(pts, gmm.weights, gmm.means, gmm.variances)  # D3: the stored variances are sigma^2
    assert np.allclose(ours.numpy(), ref.score_samples(x[:20]), atol=1e-2)
    samples, _ = StackedGMM({0: gmm}).sample(4000)
    assert np.allclose(sorted(samples.mean(0).tolist()), sorted(x.mean(0).tolist()), atol=0.2)


def test_gmm_handles_fewer_samples_than_components():
    gmm = fit_gmm(np.random.RandomState(0).randn(3, 4), n_components=5, seed=0, kmeans_inits=2)
    assert gmm.means.shape[0] <= 3 and torch.isfinite(gmm_log_likelihood(torch.zeros(1, 4), gmm.weights, gmm.means,
                                                                         gmm.variances)).all()
