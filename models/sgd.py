"""``sgd``: plain fine-tuning on each task in turn, the lower bound of continual learning."""
from __future__ import annotations

from models.utils.continual_model import ContinualModel


class Sgd(ContinualModel):
    """Cross-entropy on the current batch over the full head; the whole network is trained."""

    NAME = "sgd"
    COMPATIBILITY = ["class-il", "domain-il", "task-il", "general-continual"]

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.net(inputs), labels)
        loss.backward()
        self.opt.step()
        return loss.item()
