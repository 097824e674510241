"""``joint``: after each task, train from the initial weights on all data seen so far (the upper bound)."""
from __future__ import annotations

import copy

import torch
from torch.utils.data import ConcatDataset
from tqdm import tqdm

from models.utils.continual_model import ContinualModel


class Joint(ContinualModel):
    """Non-continual reference: at the end of task t the network is reset to its initial
    weights and trained for ``n_epochs`` on the union of the training sets of tasks 0..t, with
    live augmentation. The accuracy after the last task is the joint-training upper bound.
    """

    NAME = "joint"
    COMPATIBILITY = ["class-il", "domain-il", "task-il"]
    OBSERVES_BATCHES = False  # it trains in end_task; the loop does not iterate over the task's batches

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self._initial_state = copy.deepcopy(self.net.state_dict())

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        raise RuntimeError("joint trains in end_task; observe is never called")

    def end_task(self, dataset) -> None:
        self.net.load_state_dict(self._initial_state)
        self.opt = self.get_optimizer()
        union = ConcatDataset([dataset.train_dataset(t) for t in range(self.current_task + 1)])
        loader = dataset.make_loader(union, shuffle=True)
        self.net.train()
        for epoch in range(self.args.n_epochs):
            batches = tqdm(loader, desc=f"joint epoch {epoch + 1}/{self.args.n_epochs}", leave=False,
                           disable=bool(self.args.non_verbose))
            for i, (inputs, labels, _) in enumerate(batches):
                inputs, labels = inputs.to(self.device), labels.to(self.device)
                self.opt.zero_grad(set_to_none=True)
                with self.autocast():
                    loss = self.loss(self.net(inputs), labels)
                if not torch.isfinite(loss):
                    from utils.errors import TrainingDiverged
                    raise TrainingDiverged(f"joint: loss is {loss.item()} at task {self.current_task}, "
                                           f"epoch {epoch}, step {i}; lower --lr")
                loss.backward()
                self.opt.step()
