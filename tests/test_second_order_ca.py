"""``--use_ca 1``: end-of-task classifier alignment of the trained heads on GMMs of the composed model's features."""
import dataclasses

import torch

from tests.test_second_order_model import argv_for, build
from utils.training import train


def trained(tmp_path, *extra):
    tmp_path.mkdir(exist_ok=True)
    args, dataset, model = build(argv_for(tmp_path, "--alpha_ita", "1", *extra, n_classes=6, n_tasks=3))
    seen = []
    original = model.stats.extract_features

    def spy(ds):  # records which composition each feature pass ran on
        feats, labels = original(ds)
        seen.append((model.composition.is_eval(None), model.stats.task, feats, labels))
        return feats, labels
    model.stats.extract_features = spy
    train(model, dataset, args)
    return model, seen


def test_alignment_changes_only_the_heads_and_reads_the_composed_features(tmp_path):
    plain, _ = trained(tmp_path / "a")
    aligned, passes = trained(tmp_path / "b", "--use_ca", "1")
    # modules and pre-tuned heads are untouched (bitwise): the alignment runs after training, on its own seed
    for t in range(3):
        for a, b in zip(plain.pool.task_parameters(t), aligned.pool.task_parameters(t)):
            assert torch.equal(a, b)
    for a, b in zip(plain.pretuned_head.parameters(), aligned.pretuned_head.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(plain.net.classifier.heads, aligned.net.classifier.heads):
        assert not torch.allclose(a.weight, b.weight, atol=1e-4)  # every head, past ones included, moved
    # one end-of-task pass per task, on the merged composition; its GMMs fit exactly those features:
    # after an EM step the mixture mean sum_k w_k mu_k is the class's sample mean
    ends = [(task, feats, labels) for is_eval, task, feats, labels in passes if is_eval]
    assert [task for task, _, _ in ends] == [0, 1, 2]
    assert sorted(aligned.stats.composed_gmms) == list(range(6))
    for _, feats, labels in ends:
        for c in labels.unique().tolist():
            g = aligned.stats.composed_gmms[c]
            mixture_mean = (g.weights[:, None] * g.means).sum(0)
            assert torch.allclose(mixture_mean, feats[labels == c].mean(0), atol=1e-4), c


def test_alignment_recalibrates_miscalibrated_heads(tmp_path):
    """Head 0 with a large bias takes every image; re-aligning on the composed GMMs gives each task its own back."""
    model, _ = trained(tmp_path, "--use_ca", "1")
    stats = model.stats
    feats = torch.cat([g.means for g in stats.composed_gmms.values()])
    labels = torch.tensor([c for c, g in stats.composed_gmms.items() for _ in range(len(g.weights))])

    def accuracy():
        return (model.net.classifier.seen_logits(feats).argmax(1) == labels).float().mean().item()
    before = accuracy()
    with torch.no_grad():
        model.net.classifier.heads[0].bias.add_(5)
    assert accuracy() <= 2 / 6 + 1e-6  # task 0 (2 of 6 classes) takes everything
    stats.settings = dataclasses.replace(stats.settings, num_epochs_align_pretuning=40, lr_align_pretuning=0.1,
                                         num_samples_align_pretuning=64)
    model.compose_eval()
    model.eval()
    stats.align_trained_heads(model.dataset, model.net.classifier)
    assert accuracy() >= before - 0.1 and accuracy() > 0.6

