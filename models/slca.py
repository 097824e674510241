"""``slca``: Slow Learner with Classifier Alignment (Zhang et al., ICCV 2023)."""
from __future__ import annotations

import argparse
from typing import Any

import torch

from models.feature_utils.alignment import align_classifier
from models.feature_utils.features import class_gaussians, sample_gaussians, task_features
from models.utils.continual_model import ContinualModel
from utils import seeding
from utils.args import nonneg_float, nonneg_int, positive_float, positive_int
from utils.modes import eval_mode


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

    @staticmethod
    def get_parser(parser):
        parser.add_argument("--slow_lr_ratio", type=positive_float, default=0.01, help="backbone lr / head lr")
        parser.add_argument("--milestones", type=parse_milestones, default=[], help="epochs where lr *= lr_decay")
        parser.add_argument("--lr_decay", type=positive_float, default=0.1, help="MultiStep decay factor")
        parser.add_argument("--ca_epochs", type=nonneg_int, default=5, help="classifier-alignment epochs (0: off)")
        parser.add_argument("--ca_lr", type=positive_float, default=0.01, help="classifier-alignment SGD lr")
        parser.add_argument("--ca_samples_per_class", type=positive_int, default=256,
                            help="features sampled per class and alignment epoch (also the batch size)")
        parser.add_argument("--ca_logit_norm", type=nonneg_float, default=0.1,
                            help="temperature of the per-task logit normalisation in alignment (0: off)")
        parser.add_argument("--ca_covariance", type=str, default="full", choices=["full", "diag"],
                            help="per-class covariance: full (SLCA) or diagonal (less memory)")
        parser.add_argument("--ca_cov_eps", type=positive_float, default=1e-4, help="added to the covariance diagonal")
        return parser

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
        groups = [{"params": body, "lr": self.args.lr * self.args.slow_lr_ratio}, {"params": head, "lr": self.args.lr}]
        return type(base)([g for g in groups if g["params"]], **base.defaults)

    def begin_task(self, dataset) -> None:
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.opt, self.args.milestones, self.args.lr_decay)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        return self.current_task_step(inputs, labels)

    def end_epoch(self, epoch, dataset) -> None:
        self.scheduler.step()

    def end_task(self, dataset) -> None:
        max_batches = self.get_debug_iters() + 1 if self.args.debug_mode else None
        with eval_mode(self.net):
            feats, labels = task_features(self.net.features, dataset, self.current_task, self.device, max_batches)
            self.class_stats.update(class_gaussians(feats, labels, self.args.ca_cov_eps,
                                                    diagonal=self.args.ca_covariance == "diag"))
            if self.current_task > 0 and self.args.ca_epochs > 0:
                with seeding.seeded_for(self.args, self.current_task, "align", self.device):
                    self.align_classifier(dataset)

    def align_classifier(self, dataset) -> None:
        """Train the classifier on features sampled from the class Gaussians of all seen classes."""
        head = self.net.classifier
        opt = torch.optim.SGD(head.parameters(), lr=self.args.ca_lr, momentum=0.9, weight_decay=5e-4)
        bounds = [dataset.get_offsets(t) for t in range(self.current_task + 1)]
        batch = self.args.ca_samples_per_class

        def logits(feats: torch.Tensor) -> torch.Tensor:
            out = head(feats)[:, :self.n_seen_classes]
            return task_logit_norm(out, bounds, self.args.ca_logit_norm) if self.args.ca_logit_norm > 0 else out

        align_classifier(opt, logits, lambda: sample_gaussians(self.class_stats, batch, self.cholesky_cache),
                         self.args.ca_epochs, batch, self.device)

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
