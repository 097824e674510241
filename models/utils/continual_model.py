"""``ContinualModel``: the base class of every method (Mammoth's hooks and counters)."""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Optional

import torch
from torch import nn

from backbone import ContinualBackbone
from utils import distributed
from utils.frozen_weights import PretrainedIndex


class ContinualModel(nn.Module):
    """A continual learner wrapping a backbone ``net``.

    Template, called by the training loop in this order for each task::

        meta_begin_task -> [begin_epoch -> observe* -> end_epoch]* -> meta_end_task -> evaluate -> end_eval

    Subclasses implement :meth:`observe` (one optimisation step on a batch, returning the
    loss as a float) and optionally the other hooks. ``self.opt`` is rebuilt at every task
    start from ``--optimizer``/``--lr``/``--optim_wd``/``--optim_mom``. A model that owns
    its learning-rate schedule steps it itself (the loop never touches ``self.opt``).
    """

    NAME: str = ""
    COMPATIBILITY: list[str] = []
    DEFAULTS: dict[str, Any] = {}   # parser defaults of this model (override dataset defaults)
    AVAIL_OPTIMS = ("sgd", "adam", "adamw")
    # None: the method supports --distributed ddp; otherwise the reason it does not (a one-line error)
    DDP_UNSUPPORTED: Optional[str] = None
    OBSERVES_BATCHES = True  # False: the loop skips the epochs (the method trains elsewhere, e.g. end_task)

    def __init__(self, backbone: ContinualBackbone, loss: Callable, args: argparse.Namespace,
                 transform: Callable, dataset: Any = None):
        super().__init__()
        if not self.COMPATIBILITY:
            raise TypeError(f"{type(self).__name__} must declare COMPATIBILITY")
        self.net = backbone
        self.loss = loss
        self.args = args
        self.transform = transform
        self.dataset = dataset
        self.device = torch.device("cpu")
        self.current_task = 0
        self.n_classes_current_task = self.n_past_classes = self.n_seen_classes = -1
        self.task_iteration = 0
        self.epoch_iteration = 0
        self.opt: Optional[torch.optim.Optimizer] = None
        self.pretrained_index = PretrainedIndex(backbone)  # hashes of the initial weights (lean checkpoints)

    # ----- hooks to override ----------------------------------------------------------------------
    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the method's own flags."""
        return parser

    def begin_task(self, dataset: Any) -> None:
        """Called before training on a task (counters and ``self.opt`` are already set)."""

    def begin_epoch(self, epoch: int, dataset: Any) -> None:
        """Called before each epoch."""

    def observe(self, inputs: torch.Tensor, labels: torch.Tensor, not_aug_inputs: torch.Tensor,
                epoch: Optional[int] = None) -> float:
        """One training step on a batch; returns the loss."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, dataset: Any) -> None:
        """Called after each epoch."""

    def end_task(self, dataset: Any) -> None:
        """Called after training on a task, before it is evaluated."""

    def end_eval(self, dataset: Any, accs: tuple[list[float], list[float]]) -> None:
        """Called after each evaluation with the (class-IL, task-IL) accuracy lists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits used for evaluation."""
        return self.net(x)

    def current_task_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimizer step of cross-entropy over the current task's classes only (labels made task-local)."""
        self.opt.zero_grad(set_to_none=True)
        logits = self.net(inputs)[:, self.n_past_classes:self.n_seen_classes]
        loss = self.loss(logits, labels - self.n_past_classes)
        loss.backward()
        self.opt.step()
        return loss.item()

    def get_parameters(self) -> Iterable[nn.Parameter]:
        return self.net.parameters()

    def get_debug_iters(self) -> int:
        return 5

    # ----- framework ------------------------------------------------------------------------------
    def get_optimizer(self, params: Optional[Iterable] = None, lr: Optional[float] = None) -> Optional[torch.optim.Optimizer]:
        """SGD/Adam/AdamW over ``params`` (default: :meth:`get_parameters`), or None without parameters."""
        params = [p for p in (self.get_parameters() if params is None else params) if p.requires_grad]
        if not params:
            return None
        lr = self.args.lr if lr is None else lr
        name = self.args.optimizer
        if name == "sgd":
            opt = torch.optim.SGD(params, lr=lr, weight_decay=self.args.optim_wd, momentum=self.args.optim_mom,
                                  nesterov=bool(self.args.optim_nesterov) and self.args.optim_mom > 0)
        else:
            cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            opt = cls(params, lr=lr, weight_decay=self.args.optim_wd)
        distributed.average_gradients_before_step(opt)  # data-parallel under --distributed ddp, else a no-op
        return opt

    def autocast(self) -> ContextManager:
        """bf16 autocast when ``--precision bf16``, else a no-op."""
        if getattr(self.args, "precision", "fp32") != "bf16":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def to(self, *args, **kwargs):  # keep ``self.device`` in sync
        out = super().to(*args, **kwargs)
        for p in self.parameters():
            self.device = p.device
            break
        else:
            device = kwargs.get("device", args[0] if args else None)
            if device is not None and not isinstance(device, torch.dtype):
                self.device = torch.device(device)
        return out

    def set_task_counters(self, dataset: Any, task: int) -> None:
        start, end = dataset.get_offsets(task)
        self.n_past_classes, self.n_seen_classes = start, end
        self.n_classes_current_task = end - start

    def meta_begin_task(self, dataset: Any) -> None:
        self.set_task_counters(dataset, self.current_task)
        self.task_iteration = 0
        self.epoch_iteration = 0
        self.opt = self.get_optimizer()
        self.begin_task(dataset)

    def meta_begin_epoch(self, epoch: int, dataset: Any) -> None:
        self.epoch_iteration = 0
        self.begin_epoch(epoch, dataset)

    def meta_observe(self, inputs: torch.Tensor, labels: torch.Tensor, not_aug_inputs: torch.Tensor,
                     epoch: Optional[int] = None) -> float:
        with self.autocast():
            out = self.observe(inputs, labels, not_aug_inputs, epoch=epoch)
        self.task_iteration += 1
        self.epoch_iteration += 1
        loss = out["loss"] if isinstance(out, dict) else out
        return float(loss)

    def meta_end_epoch(self, epoch: int, dataset: Any) -> None:
        self.end_epoch(epoch, dataset)

    def meta_end_task(self, dataset: Any) -> None:
        self.end_task(dataset)
        self.current_task += 1

    def meta_end_eval(self, dataset: Any, accs: tuple[list[float], list[float]]) -> None:
        self.end_eval(dataset, accs)

    # ----- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume after ``current_task`` tasks (tensors and plain types only)."""
        return {"model": self.state_dict(), "current_task": self.current_task}

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        """Restore :meth:`checkpoint_state`. Models whose structure grows per task rebuild it first."""
        self.load_state_dict(state["model"])
        self.current_task = int(state["current_task"])

    def lean_checkpoint_state(self) -> dict[str, Any]:
        """:meth:`checkpoint_state` without the tensors that still equal the pretrained backbone (their hash
        is kept); what is written to checkpoint files."""
        return self.pretrained_index.strip(self.checkpoint_state())

    def load_lean_checkpoint_state(self, state: dict[str, Any], dataset: Any, where: str = "") -> None:
        """Restore a :meth:`lean_checkpoint_state` on a freshly built model with the same pretrained weights
        (another backbone: a one-line :class:`UserError`)."""
        self.load_checkpoint_state(self.pretrained_index.fill(state, where), dataset)
