"""``derpp``: Dark Experience Replay++ (Mammoth's ``derpp``)."""
from __future__ import annotations

import torch

from models.der import Der
from utils.args import nonneg_float


class Derpp(Der):
    """``der`` + ``beta`` * CE on the stored labels of a second replayed batch (the buffer keeps labels too).
    With ``--beta 0`` the second batch is not drawn, so the run is exactly ``der``'s."""

    NAME = "derpp"
    STORES_LABELS = True
    USES_NOT_AUG = True  # the buffer stores the not-augmented images

    @staticmethod
    def get_parser(parser):
        Der.get_parser(parser)
        parser.add_argument("--beta", type=nonneg_float, default=0.5, help="weight of the CE on buffer labels")
        return parser

    def replay_loss(self) -> torch.Tensor:
        loss = super().replay_loss()
        if self.args.beta:
            buf_inputs, buf_labels, _ = self.sample_buffer()
            loss = loss + self.args.beta * self.loss(self.net(buf_inputs), buf_labels)
        return loss
