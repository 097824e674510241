"""SLCA's classifier alignment (models/feature_utils/alignment.py) gives exactly what its own loop gave (kept here as
the reference); the second-order alignment's closed-form steps (models/second_order_utils/alignment.py) equal the
autograd loop (benchmarks/alignment.py) to float32 rounding."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.feature_utils.alignment import shuffled_batches
from models.feature_utils.features import sample_gaussians
from models.second_order_utils.heads import IncrementalHead
from benchmarks.alignment import autograd_alignment, materialised_alignment
from models.second_order_utils import alignment
from models.second_order_utils.alignment import align_classifier, cosine_lr
from models.second_order_utils.pretuning import DiagonalGMM
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


def stacked(head):
    return torch.cat([h.weight.detach() for h in head.heads]), torch.cat([h.bias.detach() for h in head.heads])


def test_pretuning_alignment_equals_the_autograd_loop():
    """Same seeded draws, same steps: the weights agree to 1e-5 relative (float32 rounding; measured 3e-7)."""
    gen = torch.Generator().manual_seed(1)
    gmms = {c: DiagonalGMM(torch.tensor([0.3, 0.7]), torch.randn(2, 6, generator=gen) * 3,
                           torch.rand(2, 6, generator=gen) + 0.05) for c in range(7)}
    del gmms[5]  # a class without samples keeps its column
    torch.manual_seed(2)
    head = IncrementalHead(6, 7)
    head.add_task(3)
    head.add_task(4)
    for samples, batch, lr in ((5, 8, 0.4), (1, 16, 0.4), (40, 32, 2.0)):  # drop_last, one small batch, many steps
        before, _ = stacked(head)
        torch.manual_seed(9)
        ref_w, ref_b = autograd_alignment(head, gmms, 3, lr, samples, batch)
        torch.manual_seed(9)
        align_classifier(head, gmms, epochs=3, lr=lr, samples_per_class=samples, batch_size=batch)
        weight, bias = stacked(head)
        assert (weight - before).abs().max() > 1e-2  # it trained
        torch.testing.assert_close(weight, ref_w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias, ref_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("second_thread", [True, False])
def test_chunked_scaling_equals_the_materialised_epoch_bitwise(monkeypatch, second_thread):
    """Scaling the samples of a few steps at a time gives the same weights, bit for bit, as scaling the whole epoch
    and then gathering its batches (the same draws; chunks of 1, 3 and all steps, the last one partial; a set
    smaller than a batch), and leaves the random generator at the same point; with the next epoch's draws made in
    a second thread (a CPU) or in line (an accelerator)."""
    monkeypatch.setattr(alignment.accelerator, "is_accelerator", lambda device: not second_thread)
    threads = []
    submit = alignment.ThreadPoolExecutor.submit
    monkeypatch.setattr(alignment.ThreadPoolExecutor, "submit",
                        lambda pool, fn: threads.append(1) or submit(pool, fn))
    gen = torch.Generator().manual_seed(5)
    gmms = {c: DiagonalGMM(torch.tensor([0.2, 0.5, 0.3]), torch.randn(3, 9, generator=gen) * 2,
                           torch.rand(3, 9, generator=gen) + 0.05) for c in range(6)}
    torch.manual_seed(3)
    head = IncrementalHead(9, 6)
    head.add_task(2)
    head.add_task(4)
    start = head.state_dict()
    first, _ = stacked(head)
    for rows, samples, batch in ((8, 13, 8), (24, 13, 8), (4096, 13, 8), (8, 1, 16)):
        monkeypatch.setattr(alignment, "CHUNK_ROWS", rows)
        head.load_state_dict(start)
        torch.manual_seed(7)
        ref_w, ref_b = materialised_alignment(head, gmms, 3, 0.5, samples, batch)
        ref_next = torch.rand(3)
        torch.manual_seed(7)
        align_classifier(head, gmms, epochs=3, lr=0.5, samples_per_class=samples, batch_size=batch)
        weight, bias = stacked(head)
        assert (weight - first).abs().max() > 1e-2  # it trained
        assert torch.equal(weight, ref_w) and torch.equal(bias, ref_b)
        assert torch.equal(torch.rand(3), ref_next)
    assert len(threads) == (4 * 3 if second_thread else 0)  # every epoch's draws, in the second thread or not


def test_cosine_lr_is_the_schedulers():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    for epoch in range(7):
        assert abs(opt.param_groups[0]["lr"] - cosine_lr(0.3, epoch, 7)) < 1e-12
        opt.step()
        sched.step()


def test_alignment_draws_its_batches_on_the_weights_device(monkeypatch):
    devices = []
    randperm = torch.randperm

    def spy(n, *args, **kwargs):
        devices.append(kwargs.get("device"))
        return randperm(n, *args, **kwargs)
    monkeypatch.setattr(alignment.torch, "randperm", spy)
    gmms = {c: DiagonalGMM(torch.ones(1), torch.randn(1, 4), torch.ones(1, 4)) for c in range(3)}
    head = IncrementalHead(4, 3)
    head.add_task(3)
    align_classifier(head, gmms, epochs=2, lr=0.1, samples_per_class=4, batch_size=4)
    assert devices == [torch.device("cpu")] * 2


def test_shuffled_batches():
    torch.manual_seed(0)
    full = shuffled_batches(10, 4)
    assert [len(b) for b in full] == [4, 4, 2] and sorted(torch.cat(full).tolist()) == list(range(10))
    assert [len(b) for b in shuffled_batches(10, 4, drop_last=True)] == [4, 4]
    assert [len(b) for b in shuffled_batches(3, 4, drop_last=True)] == [3] and shuffled_batches(0, 4) == []
