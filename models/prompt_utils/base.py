"""Shared skeleton of the prompt methods: a frozen timm ViT, trainable prompts and head."""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from models.prompt_utils.vit_prompting import require_vit
from models.utils.continual_model import ContinualModel
from utils.args import index_list, nonneg_float
from utils.settings import setting


parse_layers = index_list("block indices", "0,1,2,3,4")  # ViT blocks, sorted, without repeats


def pull_constraint_setting(default: float) -> Any:
    """``--pull_constraint_coeff`` (l2p and dualprompt, each with its own default)."""
    return setting(default, nonneg_float, "weight of the key-query pull constraint")


class PromptedViTModel(ContinualModel):
    """Freezes the ViT body; trains the prompt module(s) and ``net.classifier`` with CE over the
    classes seen so far, the logits of past classes masked to -inf (Mammoth's prompt methods).
    Subclasses define :meth:`prompted_logits` returning ``(logits, extra_loss)``."""

    DEFAULTS = {"optimizer": "adam"}

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.vit = require_vit(backbone, self.NAME)
        self.vit.requires_grad_(False)
        self.net.classifier.requires_grad_(True)

    def prompt_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def get_parameters(self) -> Iterable[nn.Parameter]:
        params = list(self.net.classifier.parameters())
        for module in self.prompt_modules():
            params += list(module.parameters())
        return params

    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the frozen ViT without prompts (the key-matching query)."""
        return self.vit(x)

    def prompted_logits(self, x: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prompted_logits(x, train=False)[0]

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        logits, extra = self.prompted_logits(inputs, train=True)
        logits = logits[:, :self.n_seen_classes].float()
        if self.n_past_classes > 0:
            logits = torch.cat((torch.full_like(logits[:, :self.n_past_classes], float("-inf")),
                                logits[:, self.n_past_classes:]), dim=1)
        loss = self.loss(logits, labels) + extra
        loss.backward()
        self.opt.step()
        return loss.item()
