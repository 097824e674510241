"""``er``: Experience Replay with a reservoir buffer (Mammoth's ``er``)."""
from __future__ import annotations

from typing import Any

import torch

from models.utils.buffer import Buffer, replay_transform
from models.utils.continual_model import ContinualModel
from utils import seeding
from utils.errors import UserError
from utils.settings import RehearsalSettings

ErSettings = RehearsalSettings  # --buffer_size, --minibatch_size


class Er(ContinualModel):
    """Each step trains on the current batch concatenated with ``--minibatch_size`` augmented
    samples from the buffer, then offers the batch's non-augmented images to the reservoir."""

    NAME = "er"
    COMPATIBILITY = ["class-il", "domain-il", "task-il", "general-continual"]
    USES_NOT_AUG = True  # the buffer stores the not-augmented images
    SETTINGS = ErSettings
    settings: ErSettings

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        if self.settings.buffer_size is None:
            raise UserError(f"{self.NAME} is a rehearsal method: give --buffer_size N (e.g. --buffer_size 200)")
        self.buffer = Buffer(self.settings.buffer_size, seed=seeding.run_seed(args))
        self.replay_transform = replay_transform(dataset) if dataset is not None else None

    @property
    def minibatch_size(self) -> int:
        """``--minibatch_size``, or ``--batch_size`` when it is unset."""
        return self.settings.minibatch_size or self.args.batch_size

    def sample_buffer(self) -> tuple[torch.Tensor, ...]:
        """An augmented replay batch on the model's device."""
        return self.buffer.get_data(self.minibatch_size, transform=self.replay_transform, device=self.device)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        real_batch_size = inputs.shape[0]
        self.opt.zero_grad(set_to_none=True)
        if not self.buffer.is_empty():
            buf_inputs, buf_labels = self.sample_buffer()[:2]
            inputs = torch.cat((inputs, buf_inputs))
            labels = torch.cat((labels, buf_labels))
        loss = self.loss(self.net(inputs), labels)
        loss.backward()
        self.opt.step()
        self.buffer.add_data(examples=not_aug_inputs, labels=labels[:real_batch_size])
        return loss.item()

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "buffer": self.buffer.state_dict()}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        self.buffer.load_state_dict(state["buffer"], self.device)
