"""``ewc_on``: online Elastic Weight Consolidation (Mammoth's ``ewc_on``)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from models.utils.continual_model import ContinualModel
from utils import distributed
from utils.args import _ranged, nonneg_float, positive_int
from utils.modes import eval_mode
from utils.settings import setting

closed_unit_interval = _ranged(float, "a number in [0, 1]", lambda v: 0.0 <= v <= 1.0)


def trainable_named_parameters(net: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in net.named_parameters() if p.requires_grad}


def per_sample_fisher_terms(net: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sum over the batch of ``p(y_i|x_i) * (d log p(y_i|x_i) / d theta)**2`` for every trainable parameter.

    One gradient per sample (``torch.func.vmap``), with the network in its current mode; the
    weight ``p(y_i|x_i)`` is Mammoth's (the expected conditional probability of the true label).
    """
    params = {n: p.detach() for n, p in trainable_named_parameters(net).items()}
    buffers = {n: b.detach() for n, b in net.named_buffers()}

    def log_prob(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(net, (p, buffers), (x.unsqueeze(0),))
        return F.log_softmax(out, dim=1)[0].gather(0, y.reshape(1))[0]

    with warnings.catch_warnings():  # SDPA has no batching rule on CPU: torch loops, and says so
        warnings.filterwarnings("ignore", message="There is a performance drop")
        grads = vmap(grad(log_prob), in_dims=(None, 0, 0))(params, inputs, labels)
        with torch.no_grad():
            weights = torch.exp(vmap(log_prob, in_dims=(None, 0, 0))(params, inputs, labels))
    return {n: torch.einsum("b,b...->...", weights, g ** 2) for n, g in grads.items()}


def ewc_penalty(params: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor],
                fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum_k F_k (theta_k - theta*_k)**2`` over all parameters."""
    return sum((fisher[n] * (p - anchor[n]) ** 2).sum() for n, p in params.items())


@dataclass(frozen=True)
class EwcOnSettings:
    e_lambda: float = setting(1.0, nonneg_float, "weight of the EWC penalty")
    gamma: float = setting(1.0, closed_unit_interval, "decay of the running Fisher at each task, in [0, 1]")
    fisher_batch_size: int = setting(32, positive_int,
                                     "samples per vectorised per-sample-gradient chunk when computing the Fisher")


class EwcOn(ContinualModel):
    """CE + ``e_lambda * sum F (theta - theta*)^2``. After each task the diagonal Fisher of that
    task (mean per-sample squared gradient of the log-likelihood of the true label, weighted by
    its probability, over the task's training set) is added to ``gamma`` times the running
    Fisher, and theta* becomes the current parameters."""

    NAME = "ewc_on"
    COMPATIBILITY = ["class-il", "domain-il", "task-il"]
    SETTINGS = EwcOnSettings
    settings: EwcOnSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.fisher: Optional[dict[str, torch.Tensor]] = None
        self.anchor: Optional[dict[str, torch.Tensor]] = None

    def penalty(self) -> torch.Tensor:
        if self.fisher is None:
            return torch.zeros((), device=self.device)
        return ewc_penalty(trainable_named_parameters(self.net), self.anchor, self.fisher)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.net(inputs), labels) + self.settings.e_lambda * self.penalty()
        loss.backward()
        self.opt.step()
        return loss.item()

    def compute_fisher(self, loader: Any) -> dict[str, torch.Tensor]:
        """Mean Fisher terms over every sample of ``loader``."""
        sums = {n: torch.zeros_like(p) for n, p in trainable_named_parameters(self.net).items()}
        count = 0
        chunk = self.settings.fisher_batch_size
        for batch in loader:
            inputs, labels = batch[0].to(self.device), batch[1].to(self.device).long()
            for start in range(0, len(labels), chunk):
                terms = per_sample_fisher_terms(self.net, inputs[start:start + chunk], labels[start:start + chunk])
                for n in sums:
                    sums[n] += terms[n]
            count += len(labels)
        for s in sums.values():  # under --distributed ddp each rank saw a shard: sum the shards
            distributed.all_reduce_sum(s)
        device = next(iter(sums.values())).device
        count = int(distributed.all_reduce_sum(torch.tensor([float(count)], device=device)).item())
        return {n: s / max(count, 1) for n, s in sums.items()}

    def end_task(self, dataset) -> None:
        with eval_mode(self.net):  # BatchNorm statistics stay fixed: one gradient per sample is well defined
            fisher = self.compute_fisher(dataset.train_loader)
        if self.fisher is None:
            self.fisher = fisher
        else:
            self.fisher = {n: self.settings.gamma * self.fisher[n] + fisher[n] for n in fisher}
        self.anchor = {n: p.detach().clone() for n, p in trainable_named_parameters(self.net).items()}

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "fisher": self.fisher, "anchor": self.anchor}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        move = (lambda d: None if d is None else {n: t.to(self.device) for n, t in d.items()})
        self.fisher, self.anchor = move(state.get("fisher")), move(state.get("anchor"))

