"""``joint``: for each task, train from the initial weights on all data seen so far (the upper bound)."""
from __future__ import annotations

import copy

from datasets.utils.debug import SeededConcatDataset

from models.sgd import Sgd
from utils.training import run_epochs


class Joint(Sgd):
    """Non-continual reference: at task t the network is reset to its initial weights and trained
    for ``n_epochs`` on the union of the training sets of tasks 0..t, with live augmentation. The
    accuracy after the last task is the joint-training upper bound.
    """

    NAME = "joint"
    COMPATIBILITY = ["class-il", "domain-il", "task-il"]

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self._initial_state = copy.deepcopy(self.net.state_dict())

    def train_task(self, dataset, train_loader, task) -> None:
        """The standard epochs, over the union of the seen tasks' training sets, from the initial weights."""
        self.net.load_state_dict(self._initial_state)
        self.opt = self.get_optimizer()
        union = SeededConcatDataset([dataset.train_dataset(t) for t in range(self.current_task + 1)])
        run_epochs(self, dataset, self.args, dataset.make_loader(union, shuffle=True), task)
