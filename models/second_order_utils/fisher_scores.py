"""What the Fisher pass backpropagates, and in which batches: the class scores (all classes exactly, or the paper
code's top-k rule) and the regrouping of the incoming batches (top-k micro-batches; 16-image forwards on a CPU)."""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch

from models.second_order_utils.fisher_exact import exact_scores


def select_classes(probs: torch.Tensor, mc_classes: Optional[int]) -> list[int]:
    """All classes, or the paper code's top-k rule for one micro-batch: the k classes that occur most often
    among the samples' top-k classes; equal counts go to the class that occurs first in the row-major list of
    top-k indices (sample by sample, most likely first), as ``collections.Counter.most_common`` orders them."""
    n = probs.shape[1]
    if mc_classes is None or mc_classes >= n:
        return list(range(n))
    top = probs.topk(mc_classes, dim=1).indices.flatten().tolist()
    counts: dict[int, int] = {}
    for c in top:  # insertion order = first occurrence
        counts[c] = counts.get(c, 0) + 1
    ranked = sorted(counts, key=lambda c: -counts[c])  # stable: ties keep first-occurrence order
    return ranked[:mc_classes]


def regroup(batches: Iterable[torch.Tensor], group: int) -> Iterator[torch.Tensor]:
    """The same samples in the same order, in batches whose sizes are multiples of ``group`` (the leftover
    rows wait for the next batch; the last batch takes the rest), so micro-batch ``i`` of the stream is rows
    ``[i*group, (i+1)*group)`` of the whole pass whatever the incoming batch size."""
    carry: Optional[torch.Tensor] = None
    for x in batches:
        x = x if carry is None else torch.cat([carry, x])
        whole = (x.shape[0] // group) * group
        carry = x[whole:] if whole < x.shape[0] else None
        if whole:
            yield x[:whole]
    if carry is not None:
        yield carry


CPU_FISHER_ROWS = 16  # images per forward of the exact Fisher on a CPU: its class backwards stay in cache


def cpu_chunks(batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """CPU batches cut into ``CPU_FISHER_ROWS`` images (the exact Fisher is a sum over images, so only the order
    of the fp32 sums changes): at ViT-B/16's token count a batch of 64 takes 1.4x the time of four of 16 on the
    CPU (docs/speed.md). Accelerator batches pass whole."""
    for x in batches:
        yield from (x.split(CPU_FISHER_ROWS) if x.device.type == "cpu" else (x,))


def class_scores(logp: torch.Tensor, probs: torch.Tensor, mc_classes: Optional[int],
                 group: Optional[int]) -> list[torch.Tensor]:
    """The scores to backpropagate. All classes (``mc_classes=None``): the C - 1 scores of
    :func:`fisher_exact.exact_scores` (the same Fisher as one score per class). Top-k: one score per selected
    class c, sum_b m_bc sqrt(p_bc) log p_bc, where m_bc = 1 when c is among the classes selected for sample b's
    micro-batch of ``group`` rows."""
    n = probs.shape[1]
    if mc_classes is None or mc_classes >= n:
        return exact_scores(logp, probs)
    group = group or probs.shape[0]
    mask = torch.zeros_like(probs)
    for start in range(0, probs.shape[0], group):
        mask[start:start + group, select_classes(probs[start:start + group], mc_classes)] = 1.0
    weights = mask * probs.sqrt()
    return [(weights[:, c] * logp[:, c]).sum() for c in mask.sum(0).nonzero().flatten().tolist()]
