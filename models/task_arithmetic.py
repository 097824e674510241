"""``task_arithmetic``: each task fine-tuned alone from theta0, task vectors averaged (no regulariser)."""
from __future__ import annotations

from typing import Any

import torch

from models.utils.continual_model import ContinualModel


def is_mergeable(tensor: torch.Tensor) -> bool:
    """Float parameters and buffers (BatchNorm statistics) are averaged; counters are not."""
    return torch.is_floating_point(tensor)


class TaskArithmetic(ContinualModel):
    """The paper's "without regulariser" reference. At each task the whole network restarts from
    its initial weights theta0 and is trained with CE on that task's classes only; then its task
    vector ``tau_t = theta_t - theta0`` (backbone body) and its head rows are kept. Evaluation uses
    ``theta0 + mean_t tau_t`` with the per-task heads concatenated."""

    NAME = "task_arithmetic"
    COMPATIBILITY = ["class-il", "task-il"]

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        self.theta0 = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.tau_sum: dict[str, torch.Tensor] = {k: torch.zeros_like(v) for k, v in self.net.body.state_dict().items()
                                                 if is_mergeable(v)}
        self.n_task_vectors = 0
        self.merged_head = {k: v.detach().clone() for k, v in self.net.classifier.state_dict().items()}

    def begin_task(self, dataset) -> None:
        self.net.load_state_dict(self.theta0)

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> float:
        return self.current_task_step(inputs, labels)

    def merged_body_state(self) -> dict[str, torch.Tensor]:
        """``theta0 + mean of the task vectors`` for the body (theta0 before any task)."""
        state = {}
        for key, value in self.net.body.state_dict().items():
            init = self.theta0[f"body.{key}"]
            if key in self.tau_sum and self.n_task_vectors:
                state[key] = init + self.tau_sum[key] / self.n_task_vectors
            else:
                state[key] = value if not is_mergeable(value) else init
        return state

    def end_task(self, dataset) -> None:
        with torch.no_grad():
            for key, value in self.net.body.state_dict().items():
                if key in self.tau_sum:
                    self.tau_sum[key] += value - self.theta0[f"body.{key}"].to(value.device)
            self.n_task_vectors += 1
            rows = slice(self.n_past_classes, self.n_seen_classes)
            for key, value in self.net.classifier.state_dict().items():
                self.merged_head[key][rows] = value[rows]
        self.net.body.load_state_dict(self.merged_body_state())
        self.net.classifier.load_state_dict(self.merged_head)

    def checkpoint_state(self) -> dict[str, Any]:
        return {**super().checkpoint_state(), "theta0": self.theta0, "tau_sum": self.tau_sum,
                "n_task_vectors": self.n_task_vectors, "merged_head": self.merged_head}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        super().load_checkpoint_state(state, dataset)
        move = (lambda d: None if d is None else {k: v.to(self.device) for k, v in d.items()})
        self.theta0, self.tau_sum = move(state["theta0"]), move(state["tau_sum"])
        self.merged_head = move(state["merged_head"])
        self.n_task_vectors = int(state["n_task_vectors"])

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.theta0 = {k: v.to(self.device) for k, v in self.theta0.items()}
        self.tau_sum = {k: v.to(self.device) for k, v in self.tau_sum.items()}
        self.merged_head = {k: v.to(self.device) for k, v in self.merged_head.items()}
        return out
