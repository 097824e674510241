"""Core mechanisms of the baselines against hand computations and brute-force references."""
import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbone import ContinualBackbone
from models.ewc_on import EwcOn, ewc_penalty, per_sample_fisher_terms
from models.feature_utils.features import class_gaussians, sample_gaussians
from models.lwf_mc import lwf_mc_targets
from models.ranpac import random_features, ridge_solution, select_ridge
from models.slca import Slca, task_logit_norm
from models.task_arithmetic import TaskArithmetic
from models.utils.buffer import Buffer, reservoir_index


def tiny_net(d_in=5, d=4, classes=6, seed=0):
    torch.manual_seed(seed)
    return ContinualBackbone(nn.Sequential(nn.Linear(d_in, d), nn.Tanh()), d, classes)


def namespace(**kw):
    base = dict(lr=0.1, optimizer="sgd", optim_wd=0.0, optim_mom=0.0, optim_nesterov=False, debug_mode=False,
                batch_size=4, precision="fp32")
    base.update(kw)
    return argparse.Namespace(**base)


# ----- reservoir buffer ---------------------------------------------------------------------------
def test_reservoir_keeps_every_stream_item_with_equal_probability():
    stream, size, trials = 200, 20, 300
    gen = torch.Generator().manual_seed(0)
    counts = np.zeros(stream)
    for _ in range(trials):
        slots = list(range(size))
        for i in range(stream):
            slot = reservoir_index(i, size, gen)
            if slot >= 0:
                slots[slot] = i
        counts[slots] += 1
    groups = counts.reshape(10, 20).sum(1)          # expected 20 items * 300 trials * 0.1 = 600 per group
    assert np.all(np.abs(groups - 600) < 100), groups   # > 4 sigma; keep-first/keep-last would give 6000/0
    assert counts.sum() == size * trials


def test_buffer_stores_aligned_fields_and_samples_distinct_examples():
    torch.manual_seed(0)
    buf = Buffer(5)
    assert buf.is_empty()
    x = torch.arange(8, dtype=torch.float32).reshape(8, 1, 1, 1).expand(8, 3, 2, 2).contiguous()
    y = torch.arange(8)
    logits = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 3)
    buf.add_data(examples=x[:3], labels=y[:3], logits=logits[:3], task_labels=torch.zeros(3, dtype=torch.long))
    assert len(buf) == 3 and torch.equal(buf.labels[:3], y[:3])   # first items go to their own slots
    buf.add_data(examples=x[3:], labels=y[3:], logits=logits[3:], task_labels=torch.ones(5, dtype=torch.long))
    assert len(buf) == 5 and buf.num_seen_examples == 8
    ex, lab, lg, tl = buf.get_data(4)
    assert len(set(lab.tolist())) == 4                                # without replacement
    assert torch.equal(ex[:, 0, 0, 0].long(), lab) and torch.equal(lg[:, 0].long(), lab)
    assert torch.equal(tl, (lab >= 3).long())
    assert len(buf.get_data(50)[0]) == 5
    doubled = buf.get_data(2, transform=lambda e: e * 2)[0]
    assert doubled.shape == (2, 3, 2, 2)


def test_buffer_state_round_trip():
    torch.manual_seed(1)
    buf = Buffer(3)
    buf.add_data(torch.randn(7, 2), torch.arange(7), logits=torch.randn(7, 4))
    other = Buffer(3)
    other.load_state_dict(buf.state_dict())
    for a, b in zip(buf.get_all_data(), other.get_all_data()):
        assert torch.equal(a, b)
    assert other.num_seen_examples == 7 and other.task_labels is None
    with pytest.raises(ValueError):
        Buffer(4).load_state_dict(buf.state_dict())


# ----- EWC ----------------------------------------------------------------------------------------
def test_fisher_terms_match_a_per_sample_autograd_loop():
    net = tiny_net()
    x, y = torch.randn(7, 5), torch.randint(0, 6, (7,))
    terms = per_sample_fisher_terms(net, x, y)
    expected = {n: torch.zeros_like(p) for n, p in net.named_parameters()}
    for i in range(len(y)):
        logp = F.log_softmax(net(x[i:i + 1]), dim=1)[0, y[i]]
        grads = torch.autograd.grad(logp, list(net.parameters()))
        for (n, _), g in zip(net.named_parameters(), grads):
            expected[n] += logp.exp().detach() * g ** 2
    for n in expected:
        torch.testing.assert_close(terms[n], expected[n], rtol=1e-5, atol=1e-7)


def test_ewc_penalty_and_online_fisher_update():
    params = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])}
    anchor = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[1.0]])}
    fisher = {"a": torch.tensor([2.0, 3.0]), "b": torch.tensor([[0.5]])}
    assert ewc_penalty(params, anchor, fisher).item() == pytest.approx(2 * 1 + 3 * 1 + 0.5 * 4)

    net = tiny_net()
    model = EwcOn(net, F.cross_entropy, namespace(e_lambda=3.0, gamma=0.5, fisher_batch_size=2), None)
    batches = [(torch.randn(3, 5), torch.randint(0, 6, (3,))) for _ in range(2)]
    dataset = argparse.Namespace(train_loader=batches)
    model.end_task(dataset)
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    first = {n: t / 6 for n, t in per_sample_fisher_terms(net, x, y).items()}
    for n in first:
        torch.testing.assert_close(model.fisher[n], first[n])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    model.end_task(dataset)
    second = {n: t / 6 for n, t in per_sample_fisher_terms(net, x, y).items()}
    for n, p in net.named_parameters():
        torch.testing.assert_close(model.fisher[n], 0.5 * first[n] + second[n])
        torch.testing.assert_close(model.anchor[n], p.detach())
    with torch.no_grad():
        net.classifier.bias.add_(1.0)
    expected = 3.0 * model.fisher["classifier.bias"].sum()
    torch.testing.assert_close(model.args.e_lambda * model.penalty(), expected)


# ----- LwF-MC -------------------------------------------------------------------------------------
def test_lwf_mc_targets_are_old_sigmoids_and_new_one_hots():
    old = torch.tensor([[0.0, 2.0, 9.0, 9.0], [-1.0, 1.0, 9.0, 9.0]])
    t = lwf_mc_targets(torch.tensor([2, 3]), old, n_past=2, n_seen=4)
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    expected = torch.tensor([[0.5, s(2.0), 1, 0], [s(-1.0), s(1.0), 0, 1]], dtype=torch.float32)
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(lwf_mc_targets(torch.tensor([1]), None, 0, 2), torch.tensor([[0.0, 1.0]]))


# ----- SLCA ---------------------------------------------------------------------------------------
def test_class_gaussians_match_numpy_mean_and_unbiased_covariance():
    rng = np.random.RandomState(0)
    feats = rng.randn(12, 3)
    labels = np.array([0] * 5 + [2] * 7)
    stats = class_gaussians(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels), eps=0.1)
    assert sorted(stats) == [0, 2]
    for c in (0, 2):
        x = feats[labels == c]
        np.testing.assert_allclose(stats[c][0].numpy(), x.mean(0), rtol=1e-5)
        np.testing.assert_allclose(stats[c][1].numpy(), np.cov(x.T, ddof=1) + 0.1 * np.eye(3), rtol=1e-5, atol=1e-6)
    diag = class_gaussians(torch.tensor(feats, dtype=torch.float32), torch.tensor(labels), eps=0.1, diagonal=True)
    np.testing.assert_allclose(diag[2][1].numpy(), feats[labels == 2].var(0, ddof=1) + 0.1, rtol=1e-5)


def test_sampled_features_follow_the_class_gaussians():
    torch.manual_seed(0)
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]])
    stats = {3: (torch.tensor([1.0, -2.0]), cov), 1: (torch.tensor([0.0, 5.0]), torch.tensor([1.0, 4.0]))}
    feats, labels = sample_gaussians(stats, 20000)
    assert labels.tolist() == [1] * 20000 + [3] * 20000
    torch.testing.assert_close(feats[labels == 3].mean(0), stats[3][0], atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(feats[labels == 3].t()), cov, atol=0.06, rtol=0)
    torch.testing.assert_close(feats[labels == 1].var(0), torch.tensor([1.0, 4.0]), atol=0.12, rtol=0)


def test_task_logit_norm_by_hand():
    logits = torch.tensor([[3.0, 4.0, 0.0, 1.0]])
    out = task_logit_norm(logits, [(0, 2), (2, 4)], temperature=0.1)
    torch.testing.assert_close(out, logits / ((5.0 + 1.0) / 2) / 0.1)


def test_slca_backbone_learns_at_a_hundredth_of_the_head_rate():
    model = Slca(tiny_net(), F.cross_entropy, namespace(slow_lr_ratio=0.01, optim_mom=0.9), None)
    opt = model.get_optimizer()
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([0.001, 0.1]) and opt.defaults["momentum"] == 0.9
    head = [g for g in opt.param_groups if g["lr"] == pytest.approx(0.1)][0]["params"]
    assert {id(p) for p in head} == {id(p) for p in model.net.classifier.parameters()}


# ----- RanPAC -------------------------------------------------------------------------------------
def test_random_projection_and_ridge_solution_by_hand():
    torch.manual_seed(0)
    feats, W = torch.randn(30, 4), torch.randn(4, 16)
    H = random_features(feats, W)
    np.testing.assert_allclose(H.numpy(), np.maximum(feats.numpy() @ W.numpy(), 0), rtol=1e-5, atol=1e-6)
    Hd = H.double()
    Y = F.one_hot(torch.randint(0, 3, (30,)), 3).double()
    w = ridge_solution(Hd.t() @ Hd, Hd.t() @ Y, 0.7)
    h, y = Hd.numpy(), Y.numpy()
    np.testing.assert_allclose(w.numpy(), np.linalg.inv(h.T @ h + 0.7 * np.eye(16)) @ h.T @ y, rtol=1e-8)
    # accumulating G and Q chunk by chunk (task by task) gives the same solution
    G = Hd[:10].t() @ Hd[:10] + Hd[10:].t() @ Hd[10:]
    Q = Hd[:10].t() @ Y[:10] + Hd[10:].t() @ Y[10:]
    torch.testing.assert_close(ridge_solution(G, Q, 0.7), w)


def test_ridge_is_chosen_by_validation_mse_on_the_split():
    torch.manual_seed(0)
    H = torch.randn(50, 8, dtype=torch.float64)
    Y = H @ torch.randn(8, 3, dtype=torch.float64) + 0.5 * torch.randn(50, 3, dtype=torch.float64)
    perm = torch.randperm(50)
    candidates = (1e-3, 1.0, 10.0, 1e4)
    chosen = select_ridge(H, Y, candidates, perm=perm)
    tr, va = perm[:40], perm[40:]
    mses = []
    for r in candidates:
        w = np.linalg.solve(H[tr].numpy().T @ H[tr].numpy() + r * np.eye(8), H[tr].numpy().T @ Y[tr].numpy())
        mses.append(((H[va].numpy() @ w - Y[va].numpy()) ** 2).mean())
    assert chosen == candidates[int(np.argmin(mses))]


# ----- task arithmetic ----------------------------------------------------------------------------
def test_task_arithmetic_averages_task_vectors_and_concatenates_heads():
    net = tiny_net(classes=4)
    model = TaskArithmetic(net, F.cross_entropy, namespace(), None)
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    deltas = []
    for task in range(2):
        model.current_task, model.n_past_classes, model.n_seen_classes = task, 2 * task, 2 * task + 2
        model.begin_task(None)
        for k, v in net.state_dict().items():
            assert torch.equal(v, theta0[k]), "each task starts from theta0"
        delta = {n: torch.randn_like(p) for n, p in net.named_parameters()}
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.add_(delta[n])
        deltas.append(delta)
        model.end_task(None)
    for n, p in net.body.named_parameters():
        expected = theta0[f"body.{n}"] + (deltas[0][f"body.{n}"] + deltas[1][f"body.{n}"]) / 2
        torch.testing.assert_close(p.detach(), expected)
    W = theta0["classifier.weight"]
    torch.testing.assert_close(net.classifier.weight[:2], W[:2] + deltas[0]["classifier.weight"][:2])
    torch.testing.assert_close(net.classifier.weight[2:], W[2:] + deltas[1]["classifier.weight"][2:])
