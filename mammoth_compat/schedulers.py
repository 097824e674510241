"""Mammoth's ``utils.schedulers``: the run's ``--lr_scheduler`` for a model's own optimiser, and two schedules."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR


def get_scheduler(model: Any, args: Any, reload_optim: bool = True) -> Optional[LRScheduler]:
    """The scheduler of ``--lr_scheduler`` (``multisteplr`` or ``cosine`` over ``--n_epochs``) on ``model.opt``,
    rebuilt first when ``reload_optim``; None without ``--lr_scheduler``."""
    name = getattr(args, "lr_scheduler", None)
    if not name:
        return None
    if reload_optim or getattr(model, "opt", None) is None:
        model.opt = model.get_optimizer()
    if name.lower() == "multisteplr":
        if not getattr(args, "lr_milestones", None):
            raise ValueError("--lr_scheduler multisteplr needs --lr_milestones")
        return MultiStepLR(model.opt, milestones=list(args.lr_milestones),
                           gamma=getattr(args, "sched_multistep_lr_gamma", 0.1))
    if name.lower() == "cosine":
        return CosineAnnealingLR(model.opt, T_max=int(args.n_epochs))
    raise ValueError(f"unknown --lr_scheduler {name!r}; use multisteplr or cosine")


class CosineSchedule(LRScheduler):
    """``lr = base_lr * cos(99 pi k / (200 (K - 1)))`` at step k (down to about 1.6 % of ``base_lr`` at K - 1)."""

    def __init__(self, optimizer: Optimizer, K: int):  # noqa: N803 - Mammoth's keyword
        if K <= 1:
            raise ValueError(f"CosineSchedule needs K > 1, got {K}")
        self.K = K
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        factor = 1.0 if self.last_epoch == 0 else math.cos(99 * math.pi * self.last_epoch / (200 * (self.K - 1)))
        return [base * factor for base in self.base_lrs]


class CosineSchedulerWithLinearWarmup(LRScheduler):
    """Linear warm-up from 0 over ``warmup_length`` steps, then a half cosine to 0 at ``steps``."""

    def __init__(self, optimizer: Optimizer, base_lrs: Union[Sequence[float], float], warmup_length: int, steps: int):
        self.warmup_length, self.steps = int(warmup_length), int(steps)
        lrs = list(base_lrs) if isinstance(base_lrs, (list, tuple)) else [float(base_lrs)] * len(optimizer.param_groups)
        if len(lrs) != len(optimizer.param_groups):
            raise ValueError(f"{len(lrs)} learning rates for {len(optimizer.param_groups)} parameter groups")
        self.target_lrs = lrs
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        k = self.last_epoch
        if k < self.warmup_length:
            return [lr * (k + 1) / self.warmup_length for lr in self.target_lrs]
        span = max(1, self.steps - self.warmup_length)
        return [0.5 * (1 + math.cos(math.pi * (k - self.warmup_length) / span)) * lr for lr in self.target_lrs]
