"""One classifier-alignment routine (models/feature_utils/alignment.py) gives exactly what SLCA's and the
second-order pre-tuning's own loops gave before they shared it (the loops are kept here as references)."""
import argparse

import torch
import torch.nn.functional as F
from torch import nn

from models.feature_utils.alignment import shuffled_batches
from models.feature_utils.features import sample_gaussians
from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.pretuning import DiagonalGMM, StackedGMM, align_classifier
from models.slca import Slca, SlcaSettings, task_logit_norm


def old_slca_alignment(head, class_stats, n_seen, bounds, epochs, lr, batch, temperature, device):
    """SLCA's alignment loop as it was written in models/slca.py."""
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    cache = {}
    for _ in range(epochs):
        feats, labels = sample_gaussians(class_stats, batch, cache)
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), batch):
            idx = order[start:start + batch]
            logits = head(feats[idx].to(device))[:, :n_seen]
            if temperature > 0:
                logits = task_logit_norm(logits, bounds, temperature)
            loss = F.cross_entropy(logits, labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()


def old_pretuning_alignment(head, gmms, epochs, lr, samples_per_class, batch_size, temperature=0.1):
    """The pre-tuning's alignment loop as it was written in second_order_utils/pretuning.py."""
    weight = torch.cat([h.weight.detach() for h in head.heads]).clone().requires_grad_(True)
    bias = torch.cat([h.bias.detach() for h in head.heads]).clone().requires_grad_(True)
    opt = torch.optim.SGD([weight, bias], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    sampler = StackedGMM(gmms)
    for _ in range(epochs):
        feats, labels = sampler.sample(samples_per_class)
        order = torch.randperm(len(feats))
        batches = [order] if len(feats) < batch_size else \
            [order[i:i + batch_size] for i in range(0, len(feats) - batch_size + 1, batch_size)]
        for idx in batches:
            z = F.linear(feats[idx], weight, bias)
            z = z / (temperature * (z.norm(dim=1, keepdim=True) + 1e-7))
            loss = F.cross_entropy(z, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return weight.detach(), bias.detach()


def class_stats(n_classes, dim, diagonal):
    gen = torch.Generator().manual_seed(0)
    stats = {}
    for c in range(n_classes):
        a = torch.randn(dim, dim, generator=gen)
        cov = torch.rand(dim, generator=gen) + 0.1 if diagonal else a @ a.t() / dim + 0.1 * torch.eye(dim)
        stats[c] = (torch.randn(dim, generator=gen) * 2, cov)
    return stats


def test_slca_alignment_is_unchanged():
    for diagonal, temperature in ((False, 0.1), (True, 0.0)):
        torch.manual_seed(0)
        head = nn.Linear(5, 8)
        ref = nn.Linear(5, 8)
        ref.load_state_dict(head.state_dict())
        stats = class_stats(6, 5, diagonal)
        settings = SlcaSettings(ca_lr=0.05, ca_epochs=3, ca_samples_per_class=7, ca_logit_norm=temperature)
        model = Slca.__new__(Slca)
        nn.Module.__init__(model)
        model.net = argparse.Namespace(classifier=head)
        model.settings, model.class_stats, model.cholesky_cache = settings, stats, {}
        model.n_seen_classes, model.device = 6, torch.device("cpu")
        dataset = argparse.Namespace(get_offsets=lambda t: (3 * t, 3 * t + 3))
        model.current_task = 1
        torch.manual_seed(4)
        model.align_classifier(dataset)
        torch.manual_seed(4)
        old_slca_alignment(ref, stats, 6, [(0, 3), (3, 6)], 3, 0.05, 7, temperature, torch.device("cpu"))
        assert not torch.equal(head.weight, nn.Linear(5, 8).weight)
        for a, b in zip(head.parameters(), ref.parameters()):
            assert torch.equal(a, b)


def test_pretuning_alignment_is_unchanged():
    gen = torch.Generator().manual_seed(1)
    gmms = {c: DiagonalGMM(torch.tensor([0.3, 0.7]), torch.randn(2, 6, generator=gen) * 3,
                           torch.rand(2, 6, generator=gen) + 0.05) for c in range(7)}
    torch.manual_seed(2)
    head = IncrementalHead(6, 7)
    head.add_task(3)
    head.add_task(4)
    before = torch.cat([h.weight.detach() for h in head.heads]).clone()
    for samples, batch in ((5, 8), (1, 16)):  # drop_last, and a set smaller than one batch
        torch.manual_seed(9)
        ref_w, ref_b = old_pretuning_alignment(head, gmms, 3, 0.4, samples, batch)
        torch.manual_seed(9)
        align_classifier(head, gmms, epochs=3, lr=0.4, samples_per_class=samples, batch_size=batch)
        assert torch.equal(torch.cat([h.weight.detach() for h in head.heads]), ref_w)
        assert torch.equal(torch.cat([h.bias.detach() for h in head.heads]), ref_b)
    assert not torch.equal(ref_w, before)


def test_shuffled_batches():
    torch.manual_seed(0)
    full = shuffled_batches(10, 4)
    assert [len(b) for b in full] == [4, 4, 2] and sorted(torch.cat(full).tolist()) == list(range(10))
    assert [len(b) for b in shuffled_batches(10, 4, drop_last=True)] == [4, 4]
    assert [len(b) for b in shuffled_batches(3, 4, drop_last=True)] == [3] and shuffled_batches(0, 4) == []
