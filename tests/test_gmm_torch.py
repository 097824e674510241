"""Torch k-means + diagonal-GMM EM (models/second_order_utils/gmm.py) against scikit-learn on synthetic mixtures.

Tolerances: started from the same k-means initialisation, our fp32 EM and scikit-learn's float64 EM agree on the
weights within 1e-3, the means within 1e-3 (absolute, data of unit scale) and the variances within 1e-2 relative;
both recover the generating means within 0.2. Under a simulated 2-rank split the shared fits equal the
single-process ones exactly.
"""
import numpy as np
import pytest
import torch

from models.second_order_utils import gmm as G


def mixture(seed: int, n_per: int = 200, d: int = 6):
    rng = np.random.RandomState(seed)
    centres = rng.randn(3, d) * 4.0
    scales = rng.uniform(0.3, 1.0, size=(3, d))
    x = np.concatenate([c + rng.randn(n_per, d) * s for c, s in zip(centres, scales)])
    return x, centres, scales


def by_first_mean(w, m, v):
    order = np.argsort(m[:, 0])
    return w[order], m[order], v[order]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_matches_scikit_learn_from_the_same_start(seed):
    from sklearn.mixture import GaussianMixture
    x, centres, scales = mixture(seed)
    xt = torch.tensor(x, dtype=torch.float32)
    w0, m0, v0 = G.kmeans_init(xt, 3, 10, seed, 1e-6)
    ours = G.fit_gmm(xt, n_components=3, seed=seed, kmeans_inits=10)
    ref = GaussianMixture(3, covariance_type="diag", tol=1e-3, reg_covar=1e-6, max_iter=500,
                          weights_init=(lambda w: w / w.sum())(w0.double().numpy()), means_init=m0.double().numpy(),
                          precisions_init=1.0 / v0.double().numpy(), random_state=0).fit(x)
    w, m, v = by_first_mean(ours.weights.numpy(), ours.means.numpy(), ours.variances.numpy())
    rw, rm, rv = by_first_mean(ref.weights_, ref.means_, ref.covariances_)
    assert np.allclose(w, rw, atol=1e-3)
    assert np.allclose(m, rm, atol=1e-3)
    assert np.allclose(v, rv, rtol=1e-2)
    _, cm, cv = by_first_mean(np.ones(3), centres, scales ** 2)
    assert np.allclose(m, cm, atol=0.2) and np.allclose(v, cv, rtol=0.3)


def test_batched_classes_equal_one_fit_per_class():
    xs = [torch.tensor(mixture(s, n_per=60 + 10 * s)[0], dtype=torch.float32) for s in range(3)]
    feats = torch.cat(xs)
    labels = torch.cat([torch.full((len(x),), c) for c, x in enumerate(xs)])
    together = G.fit_class_gmms(feats, labels, [0, 1, 2], seed=7, n_components=3, kmeans_inits=5)
    for c, x in enumerate(xs):  # unequal class sizes: padding must not change any fit
        alone = G.fit_gmm(x, n_components=3, seed=7000 + c, kmeans_inits=5)
        for a, b in zip(together[c].state().values(), alone.state().values()):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fewer_samples_than_components_and_seeded():
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    g = G.fit_gmm(x, n_components=5, seed=0, kmeans_inits=2)
    assert len(g.weights) <= 3 and torch.isfinite(g.means).all() and abs(float(g.weights.sum()) - 1) < 1e-5
    x = torch.tensor(mixture(0)[0], dtype=torch.float32)
    a, b = G.fit_gmm(x, 5, seed=3, kmeans_inits=4), G.fit_gmm(x, 5, seed=3, kmeans_inits=4)
    assert all(torch.equal(p, q) for p, q in zip(a.state().values(), b.state().values()))


def test_classes_split_over_ranks_give_every_rank_all_fits(monkeypatch):
    """Two simulated ranks: each fits its own classes; the all-reduce (a sum over the two ranks' packed fits)
    hands both ranks every class, equal to the single-process fits."""
    from utils import distributed
    xs = [torch.tensor(mixture(s, n_per=40)[0], dtype=torch.float32) for s in range(3)]
    feats = torch.cat(xs)
    labels = torch.cat([torch.full((len(x),), 10 + c) for c, x in enumerate(xs)])
    single = G.fit_gmms_distributed(feats, labels, [10, 11, 12, 13], seed=1, n_components=3, kmeans_inits=3)
    assert sorted(single) == [10, 11, 12]  # class 13 has no sample
    packs = {}
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for r in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "all_reduce_sum", lambda t, r=r: packs.setdefault(r, t.clone()) * 0 + t)
        G.fit_gmms_distributed(feats, labels, [10, 11, 12, 13], seed=1, n_components=3, kmeans_inits=3)
    total = packs[0] + packs[1]
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda t: t.copy_(total))
    shared = G.fit_gmms_distributed(feats, labels, [10, 11, 12, 13], seed=1, n_components=3, kmeans_inits=3)
    assert (packs[0][:, :, 1].sum(1) > 0).tolist() == [True, False, True]  # rank 0 fitted classes 10 and 12
    for c in single:
        for a, b in zip(shared[c].state().values(), single[c].state().values()):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
