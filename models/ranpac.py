"""``ranpac``: Random Projections and Pre-trained models for Continual learning (McDonnell et al., NeurIPS 2023)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from models.feature_utils.features import task_features
from models.utils.continual_model import ContinualModel
from utils import seeding
from utils.args import none_or, parse_bool, positive_float, positive_int
from utils.modes import eval_mode
from utils.settings import setting

RIDGE_CANDIDATES = tuple(10.0 ** e for e in range(-8, 14))


def random_features(feats: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """``ReLU(feats @ W_rand)``: the fixed random expansion."""
    return F.relu(feats @ projection)


def ridge_solution(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(G + ridge I)^-1 Q``: ridge-regression weights from ``G = H^T H`` and ``Q = H^T Y``."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * eye, cross)


def select_ridge(H: torch.Tensor, Y: torch.Tensor, candidates=RIDGE_CANDIDATES, train_fraction: float = 0.8,
                 perm: Optional[torch.Tensor] = None) -> float:
    """The candidate with the lowest validation MSE, fitting on ``train_fraction`` of the rows (in
    ``perm`` order, default a random permutation) and validating on the rest."""
    perm = torch.randperm(len(H), device=H.device) if perm is None else perm
    n_train = int(round(train_fraction * len(H)))
    tr, va = perm[:n_train], perm[n_train:]
    gram, cross = H[tr].t() @ H[tr], H[tr].t() @ Y[tr]
    losses = [F.mse_loss(H[va] @ ridge_solution(gram, cross, r), Y[va]).item() for r in candidates]
    return float(candidates[min(range(len(losses)), key=losses.__getitem__)])


@dataclass(frozen=True)
class RanPACSettings:
    rp_size: int = setting(10000, positive_int, "random projection dimension M")
    first_task_adapt: bool = setting(True, parse_bool, "fine-tune the backbone on the first task before freezing it")
    ridge: Optional[float] = setting(None, none_or(positive_float),
                                     "fixed ridge lambda (default: chosen per task on an 80/20 split)")


class RanPAC(ContinualModel):
    """First task (``--first_task_adapt 1``): the whole network is trained with CE on that task
    (SGD). Then the backbone is frozen; each task's non-augmented features go through a fixed
    Gaussian random projection to ``--rp_size`` dimensions and a ReLU; the Gram matrix ``G`` and
    ``Q = H^T Y`` are accumulated over tasks and the classifier is the ridge solution
    ``(G + lambda I)^-1 Q``, lambda chosen each task on an 80/20 split of that task's data (or
    ``--ridge``). Later tasks do no SGD (:meth:`train_task` skips their epochs)."""

    NAME = "ranpac"
    COMPATIBILITY = ["class-il", "task-il"]
    DDP_UNSUPPORTED = "its ridge statistics are not reduced across ranks yet"

    SETTINGS = RanPACSettings
    settings: RanPACSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        n_classes, size = backbone.classifier.out_features, self.settings.rp_size
        gen = seeding.generator(seeding.run_seed(args), 0, "projection")
        self.register_buffer("projection", torch.randn(backbone.feature_dim, size, generator=gen))
        self.register_buffer("gram", torch.zeros(size, size, dtype=torch.float64))
        self.register_buffer("cross", torch.zeros(size, n_classes, dtype=torch.float64))
        self.register_buffer("head", torch.zeros(size, n_classes))
        self.register_buffer("tasks_fitted", torch.zeros((), dtype=torch.long))
        self.ridge: Optional[float] = self.settings.ridge

    def train_task(self, dataset, train_loader, task) -> None:
        if self.settings.first_task_adapt and self.current_task == 0:
            super().train_task(dataset, train_loader, task)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        return self.current_task_step(inputs, labels)

    def end_task(self, dataset) -> None:
        self.net.requires_grad_(False)
        with eval_mode(self.net):
            feats, labels = task_features(self.net.features, dataset, self.current_task, self.device)
        H = random_features(feats, self.projection).double()
        Y = F.one_hot(labels, self.cross.shape[1]).double()
        split = seeding.generator(seeding.run_seed(self.args), self.current_task, "ridge_split")
        perm = torch.randperm(len(H), generator=split).to(H.device)
        ridge = self.settings.ridge if self.settings.ridge is not None else select_ridge(H, Y, perm=perm)
        self.ridge = ridge
        self.gram += H.t() @ H
        self.cross += H.t() @ Y
        self.head.copy_(ridge_solution(self.gram, self.cross, ridge).float())
        self.tasks_fitted += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if int(self.tasks_fitted) == 0:
            return self.net(x)
        return random_features(self.net.features(x).float(), self.projection) @ self.head

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "ridge": self.ridge}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        self.ridge = state.get("ridge")
        if int(self.tasks_fitted) > 0:
            self.net.requires_grad_(False)
