"""``seed``: Selection of Experts for Ensemble Diversification (Rypeść et al., ICLR 2024)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.feature_utils.features import class_gaussians, gathered_task_features
from models.feature_utils.gaussians import ensemble_log_probs, gaussian_log_prob, mean_pairwise_kl
from models.utils.continual_model import ContinualModel
from utils.args import positive_float, positive_int, unit_interval
from utils.modes import eval_mode
from utils.settings import setting


@dataclass(frozen=True)
class SeedSettings:
    num_experts: int = setting(5, positive_int, "number of experts K")
    seed_alpha: float = setting(0.99, unit_interval,
                                "weight of the feature distillation when fine-tuning an expert (CE gets 1 - alpha)")
    seed_tau: float = setting(1.0, positive_float, "temperature of the ensemble softmax")
    seed_cov_eps: float = setting(1e-4, positive_float, "added to the diagonal of each class covariance")


class Seed(ContinualModel):
    """``--num_experts`` copies of the backbone body (the first is the backbone itself), each with
    its own linear head. Task t < K trains expert t; a later task fine-tunes the expert in whose
    feature space the task's classes overlap least: the largest mean KL divergence between the
    Gaussians (mean, covariance) of the new classes. Training: ``(1 - alpha) CE`` on the task's
    classes ``+ alpha * MSE`` between the expert's features and its features before the task
    (only when the expert was trained before). After each task, every expert trained so far fits a
    Gaussian per new class; an expert created at task k knows the classes of tasks >= k. Inference:
    per expert a softmax over its known classes of ``log N(f_e(x); class) / tau``, averaged per class
    over the experts that know it (the Bayesian ensemble); the logits are the log of that mean."""

    NAME = "seed"
    COMPATIBILITY = ["class-il", "task-il"]
    SETTINGS = SeedSettings
    settings: SeedSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        K, D, C = self.settings.num_experts, backbone.feature_dim, backbone.classifier.out_features
        self.experts = nn.ModuleList([backbone.body] + [copy.deepcopy(backbone.body) for _ in range(K - 1)])
        self.heads = nn.ModuleList([nn.Linear(D, C) for _ in range(K)])
        self.register_buffer("means", torch.zeros(K, C, D))
        self.register_buffer("chols", torch.zeros(K, C, D, D))
        self.register_buffer("known", torch.zeros(K, C, dtype=torch.bool))
        self.register_buffer("expert_of_task", torch.full((dataset.n_tasks if dataset is not None else 1,), -1))
        self.requires_grad_(False)
        self.teacher: nn.Module | None = None
        self.selected = -1

    @property
    def n_trained_experts(self) -> int:
        return min(self.current_task, len(self.experts))

    def expert_features(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x)

    def get_parameters(self):
        if self.selected < 0:
            return []
        return [*self.experts[self.selected].parameters(), *self.heads[self.selected].parameters()]

    @torch.no_grad()
    def task_stats(self, e: int, dataset) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Gaussians (mean, covariance) of the current task's classes in expert e's feature space."""
        with eval_mode(self):
            feats, labels = gathered_task_features(lambda x: self.expert_features(e, x), dataset, self.current_task,
                                                   self.device)
        return class_gaussians(feats, labels, self.settings.seed_cov_eps)

    def select_expert(self, dataset) -> int:
        """Expert t while experts are left; then the one with the largest mean KL between new classes."""
        t = self.current_task
        if t < len(self.experts):
            return t
        overlaps = [mean_pairwise_kl(list(self.task_stats(e, dataset).values())) for e in range(len(self.experts))]
        return max(range(len(overlaps)), key=overlaps.__getitem__)

    def begin_task(self, dataset) -> None:
        self.requires_grad_(False)
        self.selected = self.select_expert(dataset)
        self.expert_of_task[self.current_task] = self.selected
        first_use = self.selected == self.current_task
        self.teacher = None if first_use else copy.deepcopy(self.experts[self.selected]).eval()
        self.experts[self.selected].requires_grad_(True)
        self.heads[self.selected].requires_grad_(True)
        self.opt = self.get_optimizer()

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        feats = self.expert_features(self.selected, inputs)
        logits = self.heads[self.selected](feats)[:, self.n_past_classes:self.n_seen_classes]
        loss = self.loss(logits, labels - self.n_past_classes)
        if self.teacher is not None:
            with torch.no_grad():
                old = self.teacher(inputs)
            alpha = self.settings.seed_alpha
            loss = (1 - alpha) * loss + alpha * F.mse_loss(feats, old)
        loss.backward()
        self.opt.step()
        return loss.item()

    def end_task(self, dataset) -> None:
        self.requires_grad_(False)
        self.teacher = None
        for e in range(min(self.current_task + 1, len(self.experts))):
            for c, (mean, cov) in self.task_stats(e, dataset).items():
                self.means[e, c] = mean
                self.chols[e, c] = torch.linalg.cholesky(cov.double()).float()
                self.known[e, c] = True
        self.selected = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.known.any()):
            return self.heads[0](self.experts[0](x))
        n_classes = self.known.shape[1]
        experts = [e for e in range(len(self.experts)) if bool(self.known[e].any())]
        ll = torch.full((len(experts), x.shape[0], n_classes), float("-inf"), device=x.device)
        for i, e in enumerate(experts):
            feats = self.expert_features(e, x).float()
            for c in self.known[e].nonzero()[:, 0].tolist():
                ll[i, :, c] = gaussian_log_prob(feats, self.means[e, c], self.chols[e, c])
        return ensemble_log_probs(ll, self.known[experts], self.settings.seed_tau)

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        self.requires_grad_(False)
