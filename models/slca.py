"""``slca``: Slow Learner with Classifier Alignment (Zhang et al., ICCV 2023)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from models.feature_utils.alignment import align_classifier
from models.feature_utils.features import class_gaussians, sample_gaussians, task_features
from models.utils.continual_model import ContinualModel
from utils import seeding
from utils.args import nonneg_float, nonneg_int, positive_float, positive_int
from utils.modes import eval_mode
from utils.settings import setting


def parse_milestones(text: str) -> list[int]:
    try:
        values = sorted(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 20,40, got '{text}'") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"milestones must be epochs >= 1, got '{text}'")
    return values


def task_logit_norm(logits: torch.Tensor, bounds: list[tuple[int, int]], temperature: float) -> torch.Tensor:
    """SLCA's logit normalisation: divide by the mean over tasks of each task's logit L2 norm, then by
    ``temperature``."""
    norms = torch.cat([logits[:, s:e].norm(p=2, dim=1, keepdim=True) + 1e-7 for s, e in bounds], dim=1)
    return logits / norms.mean(dim=1, keepdim=True) / temperature


@dataclass(frozen=True)
class SlcaSettings:
    slow_lr_ratio: float = setting(0.01, positive_float, "backbone lr / head lr")
    milestones: list[int] = setting([], parse_milestones, "epochs where lr *= lr_decay")
    lr_decay: float = setting(0.1, positive_float, "MultiStep decay factor")
    ca_epochs: int = setting(5, nonneg_int, "classifier-alignment epochs (0: off)")
    ca_lr: float = setting(0.01, positive_float, "classifier-alignment SGD lr")
    ca_samples_per_class: int = setting(256, positive_int,
                                        "features sampled per class and alignment epoch (also the batch size)")
    ca_logit_norm: float = setting(0.1, nonneg_float,
                                   "temperature of the per-task logit normalisation in alignment (0: off)")
    ca_covariance: str = setting("full", str, "per-class covariance: full (SLCA) or diagonal (less memory)",
                                 choices=["full", "diag"])
    ca_cov_eps: float = setting(1e-4, positive_float, "added to the covariance diagonal")


class Slca(ContinualModel):
    """Slow learner: SGD with the backbone learning rate ``--slow_lr_ratio`` (1/100) times the
    head's, CE on the current task's logits, MultiStep schedule (``--milestones``, ``--lr_decay``)
    stepped by the model at each epoch end. After each task, per-class Gaussian statistics (mean,
    covariance) of the non-augmented features are stored; from the second task on, the classifier
    is re-aligned for ``--ca_epochs`` on features sampled from all seen classes' Gaussians."""

    NAME = "slca"
    COMPATIBILITY = ["class-il", "task-il"]
    DDP_UNSUPPORTED = "its class statistics are not gathered across ranks yet"
    DEFAULTS = {"optim_mom": 0.9}
    SETTINGS = SlcaSettings
    settings: SlcaSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.class_stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cholesky_cache: dict[int, torch.Tensor] = {}  # derived from class_stats, not checkpointed
        self.scheduler = None

    def get_optimizer(self, params=None, lr=None):
        if params is not None:
            return super().get_optimizer(params, lr)
        base = super().get_optimizer()
        body = [p for p in self.net.body.parameters() if p.requires_grad]
        head = [p for p in self.net.classifier.parameters() if p.requires_grad]
        groups = [{"params": body, "lr": self.args.lr * self.settings.slow_lr_ratio}, {"params": head, "lr": self.args.lr}]
        return type(base)([g for g in groups if g["params"]], **base.defaults)

    def begin_task(self, dataset) -> None:
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.opt, self.settings.milestones, self.settings.lr_decay)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        return self.current_task_step(inputs, labels)

    def end_epoch(self, epoch, dataset) -> None:
        self.scheduler.step()

    def end_task(self, dataset) -> None:
        with eval_mode(self.net):
            feats, labels = task_features(self.net.features, dataset, self.current_task, self.device)
            self.class_stats.update(class_gaussians(feats, labels, self.settings.ca_cov_eps,
                                                    diagonal=self.settings.ca_covariance == "diag"))
            if self.current_task > 0 and self.settings.ca_epochs > 0:
                with seeding.seeded_for(self.args, self.current_task, "align", self.device):
                    self.align_classifier(dataset)

    def align_classifier(self, dataset) -> None:
        """Train the classifier on features sampled from the class Gaussians of all seen classes."""
        head, s = self.net.classifier, self.settings
        opt = torch.optim.SGD(head.parameters(), lr=s.ca_lr, momentum=0.9, weight_decay=5e-4)
        bounds = [dataset.get_offsets(t) for t in range(self.current_task + 1)]
        batch = s.ca_samples_per_class

        def logits(feats: torch.Tensor) -> torch.Tensor:
            out = head(feats)[:, :self.n_seen_classes]
            return task_logit_norm(out, bounds, s.ca_logit_norm) if s.ca_logit_norm > 0 else out

        align_classifier(opt, logits, lambda: sample_gaussians(self.class_stats, batch, self.cholesky_cache),
                         s.ca_epochs, batch, self.device)

    def checkpoint_state(self) -> dict[str, Any]:
        stats = {c: torch.stack((m, v)) if v.dim() == 1 else {"mean": m, "cov": v} for c, (m, v) in
                 self.class_stats.items()}
        return {**super().checkpoint_state(), "class_stats": stats}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        self.class_stats = {}
        for c, value in state["class_stats"].items():
            mean, cov = (value[0], value[1]) if isinstance(value, torch.Tensor) else (value["mean"], value["cov"])
            self.class_stats[int(c)] = (mean.to(self.device), cov.to(self.device))
