"""``derpp``: Dark Experience Replay++ (Mammoth's ``derpp``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.der import Der, DerSettings
from utils.args import nonneg_float
from utils.settings import setting


@dataclass(frozen=True)
class DerppSettings(DerSettings):
    beta: float = setting(0.5, nonneg_float, "weight of the CE on buffer labels")


class Derpp(Der):
    """``der`` + ``beta`` * CE on the stored labels of a second replayed batch (the buffer keeps labels too).
    With ``--beta 0`` the second batch is not drawn, so the run is exactly ``der``'s."""

    NAME = "derpp"
    STORES_LABELS = True
    USES_NOT_AUG = True  # the buffer stores the not-augmented images
    SETTINGS = DerppSettings
    settings: DerppSettings

    def replay_loss(self) -> torch.Tensor:
        loss = super().replay_loss()
        if self.settings.beta:
            buf_inputs, buf_labels, _ = self.sample_buffer()
            loss = loss + self.settings.beta * self.loss(self.net(buf_inputs), buf_labels)
        return loss
