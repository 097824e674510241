"""``simplecil``: SimpleCIL / APER (Zhou et al., IJCV 2024): a prototype classifier on pre-trained features."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from models.feature_utils.features import gathered_task_features
from models.utils.continual_model import ContinualModel
from utils.args import parse_bool
from utils.modes import eval_mode
from utils.settings import setting


@dataclass(frozen=True)
class SimpleCILSettings:
    aper_adapt: bool = setting(False, parse_bool,
                               "APER: fine-tune a copy of the network on the first task and concatenate its features")


def class_prototypes(feats: torch.Tensor, labels: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums (n_classes, D) and counts (n_classes,)."""
    sums = torch.zeros(n_classes, feats.shape[1], dtype=torch.float64, device=feats.device)
    sums.index_add_(0, labels, feats.double())
    counts = torch.bincount(labels, minlength=n_classes).double()
    return sums, counts


def cosine_logits(feats: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``cos(f(x), p_c)`` for every class c (a zero prototype gives 0)."""
    return F.normalize(feats, dim=1) @ F.normalize(prototypes, dim=1).t()


class SimpleCIL(ContinualModel):
    """No training by default: after each task the class means (prototypes) of the frozen network's
    non-augmented features replace the classifier, and the logits are the cosine similarities to
    them. With ``--aper_adapt 1`` (APER's first stage, its full fine-tuning variant) a copy of the
    network is first trained with CE on the first task, then frozen; features are the concatenation
    of the pre-trained and the adapted network's features. Works with any backbone."""

    NAME = "simplecil"
    ALIASES = ("aper",)
    COMPATIBILITY = ["class-il", "task-il"]
    SETTINGS = SimpleCILSettings
    settings: SimpleCILSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.net.requires_grad_(False)
        self.adapted = copy.deepcopy(backbone).requires_grad_(True) if self.settings.aper_adapt else None
        dim = backbone.feature_dim * (2 if self.settings.aper_adapt else 1)
        n_classes = backbone.classifier.out_features
        self.register_buffer("proto_sums", torch.zeros(n_classes, dim, dtype=torch.float64))
        self.register_buffer("proto_counts", torch.zeros(n_classes, dtype=torch.float64))

    def get_parameters(self):
        return self.adapted.parameters() if self.adapted is not None else []

    def train_task(self, dataset, train_loader, task) -> None:
        if self.adapted is not None and self.current_task == 0:  # APER: adapt on the first task only
            super().train_task(dataset, train_loader, task)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        logits = self.adapted(inputs)[:, self.n_past_classes:self.n_seen_classes]
        loss = self.loss(logits, labels - self.n_past_classes)
        loss.backward()
        self.opt.step()
        return loss.item()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.net.features(x).float()
        if self.adapted is not None:
            feats = torch.cat((feats, self.adapted.features(x).float()), dim=1)
        return feats

    @torch.no_grad()
    def end_task(self, dataset) -> None:
        if self.adapted is not None:
            self.adapted.requires_grad_(False)
        with eval_mode(self):
            feats, labels = gathered_task_features(self.features, dataset, self.current_task, self.device)
        sums, counts = class_prototypes(feats, labels, self.proto_sums.shape[0])
        self.proto_sums += sums
        self.proto_counts += counts

    @property
    def prototypes(self) -> torch.Tensor:
        return (self.proto_sums / self.proto_counts.clamp(min=1)[:, None]).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.proto_counts.any()):  # before the first task ends: the untrained head
            return (self.adapted if self.adapted is not None else self.net)(x)
        return cosine_logits(self.features(x), self.prototypes)

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        if self.adapted is not None and self.current_task > 0:
            self.adapted.requires_grad_(False)
