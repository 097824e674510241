"""Mammoth's ``RingBuffer``: one equal slice of the memory per task, each slice overwritten in ring order."""
from __future__ import annotations

from typing import Callable, Optional

import torch

from mammoth_compat.buffer import apply_transform

FIELDS = ("examples", "labels", "logits", "task_labels")


class RingBuffer:
    """``buffer_size // n_tasks`` slots per task; ``task_number`` (set by the model) selects the slice written."""

    def __init__(self, buffer_size: int, n_tasks: int = 1, device: str | torch.device = "cpu"):
        self.buffer_size = int(buffer_size)
        self.buffer_portion_size = self.buffer_size // max(1, int(n_tasks))
        self.device = torch.device(device)
        self.task_number = 0
        self.num_seen_examples = 0
        self.filled_space: Optional[torch.Tensor] = None
        for name in FIELDS:
            setattr(self, name, None)

    def __len__(self) -> int:
        return 0 if self.filled_space is None else int(self.filled_space.sum())

    def add_data(self, examples: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 logits: Optional[torch.Tensor] = None, task_labels: Optional[torch.Tensor] = None) -> None:
        given = {"examples": examples, "labels": labels, "logits": logits, "task_labels": task_labels}
        if self.filled_space is None:
            self.filled_space = torch.zeros(self.buffer_size, dtype=torch.bool, device=self.device)
        for name, value in given.items():
            if value is not None and getattr(self, name) is None:
                dtype = torch.int64 if name.endswith("labels") else torch.float32
                setattr(self, name, torch.zeros((self.buffer_size, *value.shape[1:]), dtype=dtype, device=self.device))
        for i in range(len(examples)):
            slot = self.num_seen_examples % self.buffer_portion_size + self.task_number * self.buffer_portion_size
            self.num_seen_examples += 1
            if slot >= self.buffer_size:
                continue
            self.filled_space[slot] = True
            for name, value in given.items():
                if value is not None:
                    getattr(self, name)[slot] = value[i].to(self.device)

    def _take(self, index: torch.Tensor, transform: Optional[Callable], device: Optional[torch.device]) -> tuple:
        target = torch.device(device) if device is not None else self.device
        out = [apply_transform(self.examples[index], transform).to(target)]
        out += [getattr(self, n)[index].to(target) for n in FIELDS[1:] if getattr(self, n) is not None]
        return tuple(out)

    def get_data(self, size: int, transform: Optional[Callable] = None,
                 device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
        """``size`` distinct random stored samples (all if fewer): ``(examples, labels, ...)``."""
        if self.is_empty():
            raise RuntimeError("the buffer is empty")
        filled = torch.nonzero(self.filled_space).flatten()
        choice = filled[torch.randperm(len(filled), device=filled.device)[:min(int(size), len(filled))]]
        return self._take(choice, transform, device)

    def get_all_data(self, transform: Optional[Callable] = None,
                     device: Optional[torch.device] = None) -> tuple[torch.Tensor, ...]:
        if self.is_empty():
            raise RuntimeError("the buffer is empty")
        return self._take(torch.nonzero(self.filled_space).flatten(), transform, device)

    def is_empty(self) -> bool:
        return len(self) == 0

    def empty(self) -> None:
        for name in FIELDS:
            setattr(self, name, None)
        self.filled_space = None
        self.num_seen_examples = 0
