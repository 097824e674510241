"""--fisher_mc_classes k: the paper code's rule (classes chosen per --batch_size micro-batch, Counter order on
ties), the same Fisher whatever --stats_batch_size, against a hand-written per-sample loop of that rule."""
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from models.second_order_utils.fisher import network_fisher
from models.second_order_utils.fisher_scores import select_classes
from models.second_order_utils.modules import inject_adapters
from tests.test_second_order_math import tiny_vit


def reference_fisher(forward, layers, x, k, micro_batch):
    """Per micro-batch of ``micro_batch`` samples: the k most common of the samples' top-k classes
    (Counter.most_common), then sum_b sum_{c selected} p_bc (d log p_bc / dW)^2, one autograd call each."""
    weights = {n: l.base.weight for n, l in layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    out = {n: torch.zeros_like(w) for n, w in weights.items()}
    for start in range(0, x.shape[0], micro_batch):
        xb = x[start:start + micro_batch]
        with torch.no_grad():
            top = F.softmax(forward(xb), dim=1).topk(k, dim=1).indices.flatten().tolist()
        chosen = [c for c, _ in Counter(top).most_common(k)]
        for b in range(xb.shape[0]):
            logp = F.log_softmax(forward(xb[b:b + 1]), dim=1)[0]
            for c in chosen:
                grads = torch.autograd.grad(logp[c], list(weights.values()), retain_graph=True)
                for (n, _), g in zip(weights.items(), grads):
                    out[n] += logp[c].exp().detach() * g.pow(2)
    for w in weights.values():
        w.requires_grad_(False)
    return {n: v.view(layers[n].d_out, layers[n].d_in) for n, v in out.items()}


def test_ties_follow_the_first_occurrence_among_the_top_k():
    probs = torch.tensor([[0.0, 0.1, 0.3, 0.0, 0.6],    # top-2: 4, 2
                          [0.5, 0.3, 0.1, 0.1, 0.0],    # top-2: 0, 1
                          [0.1, 0.1, 0.1, 0.6, 0.1]])  # top-1 only counts once more for 3
    assert select_classes(probs[:2], 2) == [4, 2]  # all counts 1: the first two that occur (not 0, 1)
    probs2 = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.7], [0.0, 0.0, 0.6, 0.0, 0.4], [0.6, 0.0, 0.0, 0.4, 0.0]])
    assert select_classes(probs2, 2) == [4, 2]  # 4 and 2 twice, 0 and 3 once
    assert select_classes(probs2, None) == [0, 1, 2, 3, 4] and select_classes(probs2, 5) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_fisher_is_the_papers_rule_whatever_the_stats_batch(k):
    net = tiny_vit()
    layers = inject_adapters(net.body, "lora", rank=2)
    for p in net.parameters():
        p.requires_grad_(False)
    torch.manual_seed(3)
    x = torch.randn(11, 3, 8, 8)

    def forward(inputs):  # an input-dependent offset makes the samples' top classes differ
        return net(inputs) + 3 * inputs[:, 0, 0, :5]
    micro_batch = 4  # --batch_size
    ref = reference_fisher(forward, layers, x, k, micro_batch)
    for cuts in ([11], [3, 3, 3, 2], [5, 6], [1] * 11, [8, 3]):  # --stats_batch_size 11, 3, 5/6, 1, 8
        starts = [sum(cuts[:i]) for i in range(len(cuts))]
        sums, n = network_fisher(forward, layers, [x[s:s + c] for s, c in zip(starts, cuts)], mc_classes=k,
                                 mc_group=micro_batch)
        assert n == 11
        for name in ref:
            err = (sums[name] - ref[name]).norm() / ref[name].norm()
            assert err <= 1e-4, (cuts, name, float(err))
    selected_by_batch = network_fisher(forward, layers, [x[:5], x[5:]], mc_classes=k)[0]  # old rule: per stats batch
    assert any((selected_by_batch[n] - ref[n]).norm() / ref[n].norm() > 1e-3 for n in ref)
