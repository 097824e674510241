"""LiDER (Bonicelli et al., NeurIPS 2022): Lipschitz-driven rehearsal. Mammoth's ``LiderOptimizer`` base class.

Each layer's Lipschitz coefficient is estimated per sample as the top singular value of the transition matrix
between the normalised feature maps entering and leaving it (power iteration). ``minimization_lip_loss`` lowers
them on buffer samples; ``dynamic_budget_lip_loss`` pulls them towards learnable per-layer budgets
(``net.lip_coeffs``) initialised by :meth:`LiderOptimizer.init_net` from the first task's data.
"""
from __future__ import annotations

import argparse
import logging
from typing import Any, Optional

import torch
import torch.nn.functional as F

from models.utils.continual_model import ContinualModel

EPS = torch.finfo(torch.float32).eps


def add_lipschitz_args(parser: argparse.ArgumentParser) -> None:
    """``--alpha_lip_lambda`` (minimisation loss), ``--beta_lip_lambda`` (budget loss), ``--headless_init_act``,
    ``--grad_iter_step`` (first power iteration with gradients; negative: counted from the end)."""
    parser.add_argument("--alpha_lip_lambda", type=float, default=0,
                        help="weight of the Lipschitz minimisation loss on buffer samples")
    parser.add_argument("--beta_lip_lambda", type=float, default=0, help="weight of the Lipschitz budget loss")
    parser.add_argument("--headless_init_act", type=str, choices=["relu", "lrelu"], default="relu",
                        help="activation applied to the learnable budgets")
    parser.add_argument("--grad_iter_step", type=int, default=-2,
                        help="power iteration from which gradients flow (negative: from the end)")


class LiderOptimizer(ContinualModel):
    """Base class of the LiDER variants (their ``observe`` adds the two losses to the method's own)."""

    def __init__(self, backbone: Any, loss: Any, args: argparse.Namespace, transform: Any, dataset: Any = None):
        super().__init__(backbone, loss, args, transform, dataset=dataset)
        if self.args.alpha_lip_lambda == 0 and self.args.beta_lip_lambda == 0:
            logging.error("LiDER is enabled but alpha_lip_lambda and beta_lip_lambda are both 0: it has no effect")

    @staticmethod
    def get_norm(t: torch.Tensor) -> torch.Tensor:
        return torch.norm(t, dim=1, keepdim=True) + EPS

    @staticmethod
    def transmitting_matrix(fm1: torch.Tensor, fm2: torch.Tensor) -> torch.Tensor:
        """(B, C1, C2) mean outer product of two feature maps over the positions (``fm1`` pooled to ``fm2``'s)."""
        if fm1.shape[2] > fm2.shape[2]:
            fm1 = F.adaptive_avg_pool2d(fm1, fm2.shape[-2:])
        a = fm1.flatten(2)
        return torch.bmm(a, fm2.flatten(2).transpose(1, 2)) / a.shape[2]

    def compute_transition_matrix(self, front: torch.Tensor, latter: torch.Tensor) -> torch.Tensor:
        m = self.transmitting_matrix(front, latter)
        return torch.bmm(m, m.transpose(2, 1))

    def top_eigenvalue(self, K: torch.Tensor, n_power_iterations: int = 10) -> torch.Tensor:  # noqa: N803
        """Square root of the top eigenvalue of each (symmetric PSD) ``K[b]``, by power iteration; gradients flow
        through the iterations from ``--grad_iter_step`` on."""
        step = self.args.grad_iter_step
        first = n_power_iterations + step + 1 if step < 0 else step
        if not 0 <= first <= n_power_iterations:
            raise ValueError(f"--grad_iter_step {step} is outside the {n_power_iterations} power iterations")
        v = torch.rand(K.shape[0], K.shape[1], 1, device=K.device, dtype=K.dtype)
        norm: Optional[torch.Tensor] = None
        for it in range(n_power_iterations):
            with torch.set_grad_enabled(torch.is_grad_enabled() and it >= first):
                m = torch.bmm(K, v)
                norm = torch.norm(m, dim=1, keepdim=True) + EPS
                v = m / norm
        return torch.sqrt(norm / (torch.norm(v, dim=1, keepdim=True) + EPS))

    def get_layer_lip_coeffs(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """Per-sample Lipschitz estimate of the layer mapping ``features_a`` to ``features_b``."""
        a, b = features_a.double(), features_b.double()
        a, b = a / self.get_norm(a), b / self.get_norm(b)
        return self.top_eigenvalue(self.compute_transition_matrix(a, b))

    def get_feature_lip_coeffs(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """One (B,) estimate per consecutive pair of ``features`` (input first); channels of the later map are
        pooled to the earlier map's count."""
        out = []
        for fma, fmb in zip(features[:-1], features[1:]):
            pooled = F.adaptive_avg_pool1d(fmb.flatten(2).transpose(1, 2), fma.shape[1]).transpose(1, 2)
            out.append(self.get_layer_lip_coeffs(fma, pooled.reshape(fmb.shape[0], -1, *fmb.shape[2:]))
                       .reshape(len(fma)))
        return out

    @torch.no_grad()
    def init_net(self, dataset: Any) -> None:
        """Set the learnable budgets ``net.lip_coeffs`` to the mean per-layer estimates on the task's data."""
        was_training = self.net.training
        self.net.eval()
        rows = []
        for i, data in enumerate(dataset.train_loader):
            if self.args.debug_mode and i > self.get_debug_iters():
                break
            inputs = data[0].to(self.device)
            if inputs.dim() == 5:
                inputs = inputs.flatten(0, 1)
            _, maps = self.net(inputs, returnt="full")
            rows.append(torch.stack(self.get_feature_lip_coeffs([inputs] + maps), dim=1))
        self.net.train(was_training)
        budget = torch.cat(rows).mean(0).float().to(self.device)
        self.net.lip_coeffs = budget.clone().requires_grad_(True)
        self.opt = self.get_optimizer()

    def minimization_lip_loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Mean Lipschitz estimate over layers and samples (LiDER eq. 8)."""
        return torch.stack(self.get_feature_lip_coeffs(features), dim=1).mean()

    def dynamic_budget_lip_loss(self, features: list[torch.Tensor]) -> torch.Tensor:
        """L1 distance of the estimates to the activated budgets (LiDER eq. 7)."""
        values = torch.stack(self.get_feature_lip_coeffs(features), dim=1)
        budgets = self.net.lip_coeffs[:values.shape[1]]
        budgets = F.relu(budgets) if self.args.headless_init_act == "relu" else F.leaky_relu(budgets)
        return F.l1_loss(values, budgets.unsqueeze(0).expand_as(values).to(values.dtype))
