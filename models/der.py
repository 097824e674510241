"""``der``: Dark Experience Replay (Buzzega et al., NeurIPS 2020; Mammoth's ``der``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.er import Er, ErSettings
from utils.args import nonneg_float
from utils.settings import setting


@dataclass(frozen=True)
class DerSettings(ErSettings):
    alpha: float = setting(0.1, nonneg_float, "weight of the logit-matching MSE")


class Der(Er):
    """CE on the current batch + ``alpha`` * MSE between the network's logits on a replayed batch and the
    logits stored with it. The reservoir keeps each example with its logits from the step it was seen (no
    labels). ``derpp`` extends it with a CE on stored labels; with ``--beta 0`` it trains exactly like this."""

    NAME = "der"
    COMPATIBILITY = ["class-il", "domain-il", "task-il", "general-continual"]
    STORES_LABELS = False
    SETTINGS = DerSettings
    settings: DerSettings

    def replay_loss(self) -> torch.Tensor:
        """``alpha`` * MSE(logits of a replayed batch, their stored logits)."""
        buf_inputs, *_, buf_logits = self.sample_buffer()
        return self.settings.alpha * F.mse_loss(self.net(buf_inputs), buf_logits)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        outputs = self.net(inputs)
        loss = self.loss(outputs, labels)
        if not self.buffer.is_empty():
            loss = loss + self.replay_loss()
        loss.backward()
        self.opt.step()
        self.buffer.add_data(examples=not_aug_inputs, labels=labels if self.STORES_LABELS else None,
                             logits=outputs.detach().float())
        return loss.item()
