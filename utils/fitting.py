"""How long a task trains and at which learning rate: Mammoth's ``--fitting_mode``, ``--lr_scheduler``,
early stopping and per-epoch evaluation (``--eval_epochs``).

* ``--fitting_mode epochs``: ``--n_epochs`` epochs; ``iters``: exactly ``--n_iters`` optimisation
  steps (epochs are repeated, the last one is cut); ``early_stopping``: epochs until the
  current task's validation metric (``--validation`` is required) has not improved by more
  than ``--early_stopping_epsilon`` for ``--early_stopping_patience`` checks, made every
  ``--early_stopping_freq`` epochs; the best weights are then restored. As in Mammoth there
  is no epoch cap in this mode.
* ``--lr_scheduler multisteplr|cosine`` schedules ``model.opt`` (rebuilt at every task start):
  stepped after every epoch, or every iteration with ``--scheduler_mode iter``. Milestones
  count scheduler steps; cosine anneals to 0 over the task's scheduler steps (Mammoth's
  cosine uses ``T_max = n_epochs`` even in iteration mode; here it covers the whole task). The learning rate is
  set from the closed form of ``MultiStepLR`` / ``CosineAnnealingLR`` after each scheduler step, so an epoch in
  which the model took no optimizer step still advances the schedule, as it does in Mammoth.
"""
from __future__ import annotations

import bisect
import copy
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from utils.errors import UserError


def check_flags(args: Any) -> None:
    """One-line errors for refused values and impossible combinations of the Mammoth flags."""
    if getattr(args, "load_best_args", False):
        raise UserError("--load_best_args is not supported: it is Mammoth's deprecated table of best arguments "
                        "(utils/best_args.py); use --model_config best")
    if args.fitting_mode == "time":
        raise UserError("--fitting_mode time is not supported: Mammoth accepts it but has no rule that ends the "
                        "task; use epochs, iters (--n_iters) or early_stopping")
    if args.save_checkpoint_mode == "old_pickle":
        raise UserError("--save_checkpoint_mode old_pickle is not supported: checkpoints are loaded with "
                        "weights_only=True, which refuses pickled objects; use safe (the default)")
    if args.fitting_mode == "iters" and not args.n_iters:
        raise UserError("--fitting_mode iters needs --n_iters N (optimisation steps per task)")
    if args.fitting_mode == "early_stopping" and not args.validation:
        raise UserError("--fitting_mode early_stopping needs --validation P (it watches the validation split)")
    if getattr(args, "custom_class_order", None) and args.permute_classes:
        raise UserError("--custom_class_order and --permute_classes both set the class order; keep one")


class LRSchedule:
    """The learning rate of ``opt``'s parameter groups after ``k`` scheduler steps: ``MultiStepLR``'s
    ``base * gamma ** (milestones <= k)``, or with ``cosine_steps`` ``CosineAnnealingLR``'s (eta_min 0)
    ``base * (1 + cos(pi k / cosine_steps)) / 2``. Set directly, it needs no optimizer step before its own."""

    def __init__(self, opt: torch.optim.Optimizer, milestones: Optional[list[int]] = None, gamma: float = 0.1,
                 cosine_steps: Optional[int] = None):
        self.opt, self.milestones, self.gamma = opt, sorted(milestones or []), gamma
        self.cosine_steps = cosine_steps
        self.base = [group["lr"] for group in opt.param_groups]
        self.k = 0

    def factor(self, k: int) -> float:
        if self.cosine_steps is not None:
            return (1 + math.cos(math.pi * k / self.cosine_steps)) / 2
        return self.gamma ** bisect.bisect_right(self.milestones, k)

    def step(self) -> None:
        self.k += 1
        factor = self.factor(self.k)
        for group, base in zip(self.opt.param_groups, self.base):
            group["lr"] = base * factor


class TaskFitting:
    """The stopping rule and the schedule of one task; the loop asks it after every step and epoch."""

    def __init__(self, model: Any, dataset: Any, args: Any, steps_per_epoch: int):
        self.model, self.dataset, self.args = model, dataset, args
        self.steps = 0
        self.scheduler = self._scheduler(steps_per_epoch)
        self.best: Optional[float] = None
        self.best_state: Optional[dict] = None
        self.bad_checks = 0
        self.stopped_early = False

    def _scheduler(self, steps_per_epoch: int) -> Optional["LRSchedule"]:
        args, opt = self.args, self.model.opt
        if not args.lr_scheduler or opt is None:
            return None
        if args.lr_scheduler == "multisteplr":
            return LRSchedule(opt, milestones=list(args.lr_milestones or []), gamma=args.sched_multistep_lr_gamma)
        if args.scheduler_mode == "iter":
            total = args.n_iters if args.fitting_mode == "iters" else args.n_epochs * steps_per_epoch
        else:
            total = math.ceil(args.n_iters / max(1, steps_per_epoch)) if args.fitting_mode == "iters" \
                else args.n_epochs
        return LRSchedule(opt, cosine_steps=max(1, int(total)))

    def epochs(self) -> Any:
        """Epoch indices of this task (unbounded for iters/early stopping; :meth:`done` ends them)."""
        epoch = 0
        while self.args.fitting_mode != "epochs" or epoch < self.args.n_epochs:
            yield epoch
            if self.done():
                return
            epoch += 1

    def after_step(self) -> None:
        self.steps += 1
        if self.scheduler is not None and self.args.scheduler_mode == "iter":
            self.scheduler.step()

    def step_budget_reached(self) -> bool:
        """True once ``--n_iters`` steps ran (``--fitting_mode iters``)."""
        return self.args.fitting_mode == "iters" and self.steps >= self.args.n_iters

    def after_epoch(self, epoch: int) -> None:
        if self.scheduler is not None and self.args.scheduler_mode == "epoch":
            self.scheduler.step()
        if self.args.fitting_mode == "early_stopping" and (epoch + 1) % self.args.early_stopping_freq == 0:
            self._check(validation_metric(self.model, self.dataset, self.args.early_stopping_metric))

    def _check(self, value: float) -> None:
        eps = self.args.early_stopping_epsilon
        better = self.best is None or (value < self.best - eps if self.args.early_stopping_metric == "loss"
                                       else value > self.best + eps)
        if better:
            self.best, self.bad_checks = value, 0
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            return
        self.bad_checks += 1
        if self.bad_checks >= self.args.early_stopping_patience:
            self.model.load_state_dict(self.best_state)
            self.stopped_early = True

    def done(self) -> bool:
        return self.step_budget_reached() or self.stopped_early


@torch.no_grad()
def validation_metric(model: Any, dataset: Any, metric: str) -> float:
    """Mean cross-entropy (over the seen classes) or class-IL accuracy (%) on the current task's validation split."""
    loader = dataset.test_loaders[-1]
    n_visible = dataset.get_offsets()[1]
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    try:
        for batch in loader:
            x, y = batch[0].to(model.device), batch[1].to(model.device)
            with model.autocast():
                logits = model(x)[:, :n_visible].float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += y.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise UserError("early stopping found an empty validation split for this task; raise --validation")
    return loss_sum / total if metric == "loss" else 100.0 * correct / total
