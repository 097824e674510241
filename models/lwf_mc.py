"""``lwf_mc``: multi-class Learning without Forgetting, iCaRL-style (Mammoth's ``lwf_mc``)."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from models.utils.continual_model import ContinualModel
from utils.args import nonneg_float
from utils.settings import setting


def lwf_mc_targets(labels: torch.Tensor, old_logits: Optional[torch.Tensor], n_past: int, n_seen: int) -> torch.Tensor:
    """BCE targets over the ``n_seen`` classes: one-hot labels on the current classes and the old
    model's sigmoid probabilities on the ``n_past`` old classes."""
    targets = F.one_hot(labels, n_seen).float()
    if n_past > 0:
        targets[:, :n_past] = torch.sigmoid(old_logits[:, :n_past])
    return targets


@dataclass(frozen=True)
class LwfMcSettings:
    wd_reg: float = setting(0.0, nonneg_float, "L2 penalty on the parameters")


class LwfMc(ContinualModel):
    """Binary cross-entropy on the logits of all seen classes; the targets of the old classes are
    the frozen previous model's sigmoid outputs (distillation), those of the current classes the
    one-hot labels. ``--wd_reg`` adds an L2 penalty on all parameters."""

    NAME = "lwf_mc"
    COMPATIBILITY = ["class-il", "task-il"]

    SETTINGS = LwfMcSettings
    settings: LwfMcSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.old_net: Optional[nn.Module] = None

    def begin_task(self, dataset) -> None:
        # the network after the previous task (also right after a resume, which restores it)
        self.old_net = copy.deepcopy(self.net).eval() if self.current_task > 0 else None
        if self.old_net is not None:
            self.old_net.requires_grad_(False)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        old_logits = None
        if self.old_net is not None:
            with torch.no_grad():
                old_logits = self.old_net(inputs).float()
        outputs = self.net(inputs)[:, :self.n_seen_classes]
        targets = lwf_mc_targets(labels, old_logits, self.n_past_classes, self.n_seen_classes)
        loss = F.binary_cross_entropy_with_logits(outputs.float(), targets)
        if self.settings.wd_reg:
            loss = loss + self.settings.wd_reg * sum((p ** 2).sum() for p in self.net.parameters() if p.requires_grad)
        loss.backward()
        self.opt.step()
        return loss.item()
