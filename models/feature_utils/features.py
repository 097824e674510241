"""Non-augmented features of one task's training images, and per-class Gaussian statistics."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from utils import distributed


@torch.no_grad()
def task_features(features: Callable[[torch.Tensor], torch.Tensor], dataset: Any, task: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``features(x)`` of every training image of ``task`` with the test transform (no augmentation),
    in a fixed order (no random draws): (N, D) float32 and (N,) labels, on ``device``."""
    feats, labels = [], []
    for x, y in dataset.make_loader(dataset.plain_train_dataset(task), shuffle=False):
        feats.append(features(x.to(device)).float())
        labels.append(y.to(device).long())
    return torch.cat(feats), torch.cat(labels)


def class_gaussians(feats: torch.Tensor, labels: torch.Tensor, eps: float,
                    diagonal: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per class c: (mean, covariance + eps*I), the unbiased covariance (``torch.cov``); with
    ``diagonal`` only the variances (+ eps). A class with one sample gets covariance eps*I."""
    out = {}
    for c in labels.unique().tolist():
        x = feats[labels == c].double()
        mean = x.mean(dim=0)
        cov = torch.cov(x.t()) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
        cov = cov.reshape(x.shape[1], x.shape[1])
        if diagonal:
            cov = torch.diagonal(cov) + eps
        else:
            cov = cov + eps * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        out[int(c)] = (mean.float(), cov.float())
    return out


def sample_gaussians(stats: dict[int, tuple[torch.Tensor, torch.Tensor]], per_class: int,
                     cholesky_cache: Optional[dict[int, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` draws ``mean + L z`` (``L L^T = cov``, z standard normal) from each class Gaussian
    (full or diagonal covariance), with labels. ``cholesky_cache`` keeps each class's ``L``."""
    feats, labels = [], []
    cache = {} if cholesky_cache is None else cholesky_cache
    for c, (mean, cov) in sorted(stats.items()):
        z = torch.randn(per_class, mean.shape[0], device=mean.device)
        if cov.dim() == 1:
            draws = mean + z * cov.sqrt()
        else:
            if c not in cache:
                cache[c] = torch.linalg.cholesky(cov.double()).float()
            draws = mean + z @ cache[c].t()
        feats.append(draws)
        labels.append(torch.full((per_class,), c, dtype=torch.long, device=mean.device))
    return torch.cat(feats), torch.cat(labels)


def gathered_task_features(features: Callable[[torch.Tensor], torch.Tensor], dataset: Any, task: int,
                           device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`task_features` of every rank concatenated (under ``--distributed ddp`` each rank's test-style
    loader holds a shard); in a single process the same as :func:`task_features`."""
    feats, labels = task_features(features, dataset, task, device)
    return distributed.all_gather_cat(feats), distributed.all_gather_cat(labels)
