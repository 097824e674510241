"""Divergence check of the training loop without a host sync per step.

A loss returned as a Python float is checked at once (it costs nothing). A loss returned as a device tensor is
folded into two device scalars, the index and the value of the first non-finite step, with ``torch.where`` (no
sync); :meth:`LossMonitor.read` copies them to the host, once, on logging steps and at the end of an epoch, and
raises :class:`TrainingDiverged` naming the first bad step. Between two reads the run may go on for up to
``LOG_EVERY - 1`` steps on NaN weights; nothing of the task is saved before the error.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from utils.errors import TrainingDiverged


class LossMonitor:
    """First non-finite loss of an epoch, tracked on the device; ``read`` is the only host sync."""

    def __init__(self, task: int, epoch: int):
        self.task, self.epoch = task, epoch
        self._first_bad: Optional[torch.Tensor] = None  # (step + 1, loss) of the first bad step; step 0: none yet
        self._last: torch.Tensor | float = 0.0
        self.host_reads = 0

    def update(self, loss: torch.Tensor | float, step: int) -> None:
        self._last = loss
        if not isinstance(loss, torch.Tensor):
            if not math.isfinite(loss):
                self._raise(step, loss)
            return
        value = loss.detach().float().reshape(1)
        pair = torch.cat([torch.full_like(value, step + 1), value])
        if self._first_bad is None:
            self._first_bad = torch.zeros_like(pair)
        fresh = (self._first_bad[0] == 0) & ~torch.isfinite(value[0])
        self._first_bad = torch.where(fresh, pair, self._first_bad)

    def read(self) -> float:
        """The last loss as a float (one device-to-host copy); raises if any step so far was not finite."""
        last = self._last
        if not isinstance(last, torch.Tensor):
            return float(last)
        packed = torch.cat([self._first_bad, last.detach().float().reshape(1)]).tolist()
        self.host_reads += 1
        if packed[0] > 0:
            self._raise(int(packed[0]) - 1, packed[1])
        return packed[2]

    def _raise(self, step: int, loss: float) -> None:
        raise TrainingDiverged(f"loss is {loss} at task {self.task + 1}, epoch {self.epoch + 1}, step {step + 1}; "
                               f"lower --lr or check the data (checkpoints of finished tasks are kept)")
