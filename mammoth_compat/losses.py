"""Losses and mixing used by Mammoth's model files: mixup, batch-hard triplet losses, similarity-preserving
distillation (SPKD) and the supervised contrastive loss (SupCon / SimCLR)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions.beta import Beta


def mixup(couples: Sequence[tuple[torch.Tensor, torch.Tensor]], alpha: float,
          force_lambda: Optional[float] = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Mix each pair ``(a, b)`` as ``l a + (1 - l) b`` with one ``l = max(u, 1 - u)``, ``u ~ Beta(alpha, alpha)``,
    per sample shared by all pairs (or ``force_lambda``); one tensor for one pair, else a tuple."""
    first = couples[0][0]
    if force_lambda is not None:
        lam = torch.full((len(first),), float(force_lambda), device=first.device)
    else:
        lam = Beta(float(alpha), float(alpha)).rsample((len(first),)).to(first.device)
        lam = torch.max(lam, 1 - lam)
    out = []
    for a, b in couples:
        if a.shape != b.shape:
            raise ValueError(f"mixup pairs must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
        weight = lam.view(-1, *([1] * (a.dim() - 1)))
        out.append(weight * a + (1 - weight) * b)
    return tuple(out) if len(out) > 1 else out[0]


def _hardest(labels: torch.Tensor, embeddings: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k largest same-label squared distances, k smallest other-label ones) per anchor, the latter inf-masked."""
    k = min(int(k), labels.shape[0])
    dist = torch.cdist(embeddings, embeddings).pow(2)
    same = labels.view(1, -1) == labels.view(-1, 1)
    positives = torch.topk(dist * same, k=k, dim=1, largest=True).values
    negatives = torch.topk(dist.masked_fill(same, float("inf")), k=k, dim=1, largest=False).values
    return positives, negatives


def _margin_loss(value: torch.Tensor, margin: float, margin_type: str) -> torch.Tensor:
    value = value + float(margin)
    return (F.softplus(value) if margin_type == "soft" else value.clamp(min=0)).mean()


def batch_hard_triplet_loss(labels: torch.Tensor, embeddings: torch.Tensor, k: int, margin: float = 0,
                            margin_type: str = "soft") -> Optional[torch.Tensor]:
    """Triplet loss over the ``k`` hardest positives and negatives of each anchor (None without any negative);
    ``soft``: ``log(1 + exp(d+ - d- + margin))``, ``hard``: ``max(0, d+ - d- + margin)``."""
    positives, negatives = _hardest(labels, embeddings, k)
    valid = torch.isfinite(negatives)
    if not bool(valid.any()):
        return None
    return _margin_loss(positives[valid] - negatives[valid], margin, margin_type)


def negative_only_triplet_loss(labels: torch.Tensor, embeddings: torch.Tensor, k: int, margin: float = 0,
                               margin_type: str = "soft") -> Optional[torch.Tensor]:
    """The triplet loss's negative term alone: pushes the ``k`` hardest negatives away (None without any)."""
    _, negatives = _hardest(labels, embeddings, k)
    valid = torch.isfinite(negatives)
    if not bool(valid.any()):
        return None
    return _margin_loss(-negatives[valid], margin, margin_type)


class SPKDLoss(nn.Module):
    """Similarity-preserving distillation: squared Frobenius distance of the row-normalised Gram matrices
    (divided by the squared batch size with ``reduction='batchmean'``)."""

    def __init__(self, reduction: str):
        super().__init__()
        self.reduction = reduction

    @staticmethod
    def _gram(z: torch.Tensor) -> torch.Tensor:
        z = torch.flatten(z, 1)
        return F.normalize(z @ z.t(), dim=1)

    def forward(self, teacher_outputs: torch.Tensor, student_outputs: torch.Tensor) -> torch.Tensor:
        loss = (self._gram(teacher_outputs) - self._gram(student_outputs)).pow(2).sum()
        return loss / teacher_outputs.shape[0] ** 2 if self.reduction == "batchmean" else loss


class SupConLoss(nn.Module):
    """Supervised contrastive loss over ``features`` (batch, views, dim); SimCLR's without labels or mask."""

    def __init__(self, temperature: float = 0.07, contrast_mode: str = "all", base_temperature: float = 0.07,
                 reduction: str = "mean"):
        super().__init__()
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', not {contrast_mode!r}")
        self.temperature, self.contrast_mode = temperature, contrast_mode
        self.base_temperature, self.reduction = base_temperature, reduction

    def forward(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if features.dim() < 3:
            raise ValueError("features must be (batch, views, ...)")
        features = features.flatten(2)
        batch, views = features.shape[:2]
        if labels is not None and mask is not None:
            raise ValueError("give labels or mask, not both")
        if mask is None:
            mask = torch.eye(batch, device=features.device) if labels is None else \
                (labels.view(-1, 1) == labels.view(1, -1)).float()
        mask = mask.float().to(features.device)
        contrast = torch.cat(torch.unbind(features, dim=1))
        anchors, n_anchor = (features[:, 0], 1) if self.contrast_mode == "one" else (contrast, views)
        logits = anchors @ contrast.t() / self.temperature
        logits = logits - logits.max(dim=1, keepdim=True).values.detach()
        not_self = torch.ones_like(logits)
        not_self[torch.arange(batch * n_anchor), torch.arange(batch * n_anchor)] = 0
        positives = mask.repeat(n_anchor, views) * not_self
        log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(1, keepdim=True))
        mean_positive = (positives * log_prob).sum(1) / positives.sum(1)
        loss = (-(self.temperature / self.base_temperature) * mean_positive).view(n_anchor, batch).mean(0)
        return loss.mean() if self.reduction == "mean" else loss.sum()
