"""``derpp``: Dark Experience Replay++ (Mammoth's ``derpp``)."""
from __future__ import annotations

import torch.nn.functional as F

from models.er import Er
from utils.args import nonneg_float


class Derpp(Er):
    """CE on the current batch + ``alpha`` * MSE between the logits of a replayed batch and the
    logits stored with it + ``beta`` * CE on the labels of a second replayed batch. The buffer
    keeps each example's logits from the step it was stored."""

    NAME = "derpp"
    COMPATIBILITY = ["class-il", "domain-il", "task-il", "general-continual"]
    USES_NOT_AUG = True  # the buffer stores the not-augmented images

    @staticmethod
    def get_parser(parser):
        Er.get_parser(parser)
        parser.add_argument("--alpha", type=nonneg_float, default=0.1, help="weight of the logit-matching MSE")
        parser.add_argument("--beta", type=nonneg_float, default=0.5, help="weight of the CE on buffer labels")
        return parser

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        outputs = self.net(inputs)
        loss = self.loss(outputs, labels)
        if not self.buffer.is_empty():
            buf_inputs, _, buf_logits = self.sample_buffer()
            loss = loss + self.args.alpha * F.mse_loss(self.net(buf_inputs), buf_logits)
            buf_inputs, buf_labels, _ = self.sample_buffer()
            loss = loss + self.args.beta * self.loss(self.net(buf_inputs), buf_labels)
        loss.backward()
        self.opt.step()
        self.buffer.add_data(examples=not_aug_inputs, labels=labels, logits=outputs.detach().float())
        return loss.item()
