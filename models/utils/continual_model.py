"""``ContinualModel``: the base class of every method (Mammoth's hooks and counters)."""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Iterable, Optional

import torch
from torch import nn

from backbone import ContinualBackbone
from mammoth_compat.model import MammothModelAPI, filter_keywords, uses_not_aug
from models.utils.buffer import Buffer
from utils import accelerator, distributed
from utils.frozen_weights import PretrainedIndex
from utils.settings import add_settings_flags, settings_from_args
from utils.optimization import COMPILE_LEVEL, apply_matmul_precision, compiled
from utils.training import run_epochs


class ContinualModel(MammothModelAPI, nn.Module):
    """A continual learner wrapping a backbone ``net``.

    Template, called by the training loop in this order for each task::

        meta_begin_task -> train_task -> meta_end_task -> evaluate -> end_eval

    where the default :meth:`train_task` runs ``[begin_epoch -> observe* -> end_epoch]`` for
    ``--n_epochs`` epochs. Subclasses implement :meth:`observe` (one optimisation step on a batch,
    returning the loss as a float) and optionally the other hooks; a method that trains otherwise
    (on other data, or not every task) overrides :meth:`train_task`. ``self.opt`` is rebuilt at every task
    start from ``--optimizer``/``--lr``/``--optim_wd``/``--optim_mom``. A model that owns
    its learning-rate schedule steps it itself (the loop never touches ``self.opt``).

    Mammoth's attributes (``N_CLASSES``, ``N_TASKS``, ``cpt``, the device-side ``transform``, ...)
    come from :class:`mammoth_compat.model.MammothModelAPI`; ``original_transform`` is the
    dataset's torchvision train pipeline.
    """

    NAME: str = ""
    COMPATIBILITY: list[str] = []
    DEFAULTS: dict[str, Any] = {}   # parser defaults of this model (override dataset defaults)
    # None: the method supports --distributed ddp; otherwise the reason it does not (a one-line error)
    DDP_UNSUPPORTED: Optional[str] = None
    # the method's typed settings (a dataclass of utils.settings fields), built once into self.settings
    SETTINGS: Optional[type] = None
    # True: observe reads the not-augmented view (otherwise the loaders never build it). Undeclared (a model file
    # written for Mammoth): decided from observe's code (mammoth_compat.model.uses_not_aug)
    USES_NOT_AUG = False
    # -O level per device type when neither -O nor --precision is given, over utils.optimization.DEFAULT_LEVELS
    DEFAULT_LEVELS: dict[str, int] = {}
    LOG_EVERY = 25  # the loop reads (host-syncs) the loss of every LOG_EVERY-th step of an epoch, and the last

    def __init__(self, backbone: ContinualBackbone, loss: Callable, args: argparse.Namespace,
                 transform: Callable, dataset: Any = None):
        super().__init__()
        if not self.COMPATIBILITY:
            raise TypeError(f"{type(self).__name__} must declare COMPATIBILITY")
        self.net = backbone
        self.loss = loss
        self.args = args
        self.settings: Any = settings_from_args(self.SETTINGS, args) if self.SETTINGS is not None else None
        self.original_transform = transform
        self.dataset = dataset
        self.device = torch.device("cpu")
        self.current_task = 0
        self.n_classes_current_task = self.n_past_classes = self.n_seen_classes = -1
        self.task_iteration = 0
        self.epoch_iteration = 0
        self.opt: Optional[torch.optim.Optimizer] = None
        apply_matmul_precision(self.code_optimization)
        if dataset is not None:
            dataset.build_not_aug = uses_not_aug(type(self), ContinualModel)
        self.pretrained_index = PretrainedIndex(backbone)  # hashes of the initial weights (lean checkpoints)

    # ----- hooks to override ----------------------------------------------------------------------
    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        """Replace the method's automatic flag values (e.g. per-device defaults) by the values the run will use, in
        place, when the arguments are parsed (so checkpoints, run folders and reports hold the resolved ones)."""

    @classmethod
    def get_parser(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add the method's own flags: one per field of ``SETTINGS`` (none without it)."""
        return add_settings_flags(parser, cls.SETTINGS) if cls.SETTINGS is not None else parser

    def begin_task(self, dataset: Any) -> None:
        """Called before training on a task (counters and ``self.opt`` are already set)."""

    def train_task(self, dataset: Any, train_loader: Any, task: int) -> None:
        """Train on task ``task`` (between ``begin_task`` and ``end_task``): by default ``--n_epochs``
        epochs of ``begin_epoch -> observe* -> end_epoch`` over ``train_loader``."""
        run_epochs(self, dataset, self.args, train_loader, task)

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
        logits = self.train_net(inputs)[:, self.n_past_classes:self.n_seen_classes]
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
            fused = accelerator.fused_optimizer(params)  # one kernel per step, no host sync
            opt = cls(params, lr=lr, weight_decay=self.args.optim_wd, **({"fused": True} if fused else {}))
        distributed.average_gradients_before_step(opt)  # data-parallel under --distributed ddp, else a no-op
        return opt

    @property
    def code_optimization(self) -> int:
        """The resolved ``-O`` level (utils/optimization.py); 2 if only ``--precision bf16`` is set."""
        level = getattr(self.args, "code_optimization", None)
        return (2 if getattr(self.args, "precision", None) == "bf16" else 0) if level is None else int(level)

    def autocast(self) -> ContextManager:
        """bf16 autocast from ``-O 2`` (``--precision bf16``), else a no-op."""
        if self.code_optimization < 2:
            return nullcontext()
        return torch.autocast(device_type=accelerator.autocast_type(self.device), dtype=torch.bfloat16)

    @property
    def train_net(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The backbone's training forward: ``torch.compile``-d under ``-O 3`` (built once, kept outside the
        module tree so state dicts are unchanged), else ``self.net``."""
        if self.code_optimization < COMPILE_LEVEL:
            return self.net
        if self.__dict__.get("_compiled_net") is None:
            self.__dict__["_compiled_net"] = compiled(self.net)
        return self.__dict__["_compiled_net"]

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
                     epoch: Optional[int] = None, **extra: torch.Tensor) -> float:
        """``observe`` on a batch; it gets ``epoch`` and the ``extra`` fields only if its signature takes them.

        Samples labelled -1 (unlabelled, ``--label_perc_by_*``) are dropped unless the model
        supports the ``cssl`` setting; a batch with none left is skipped (loss 0).
        """
        if self._may_have_unlabelled() and bool((labels < 0).any()):  # (no device sync otherwise)
            keep = labels >= 0
            if not bool(keep.any()):
                return 0.0
            inputs, labels, not_aug_inputs = inputs[keep], labels[keep], not_aug_inputs[keep]
            extra = {k: v[keep] if torch.is_tensor(v) and v.shape[:1] == keep.shape else v for k, v in extra.items()}
        kwargs = filter_keywords(self.observe, {"epoch": epoch, **extra})
        with self.autocast():
            out = self.observe(inputs, labels, not_aug_inputs, **kwargs)
        self.task_iteration += 1
        self.epoch_iteration += 1
        loss = out["loss"] if isinstance(out, dict) else out
        # a tensor stays on the device (the loop reads it on logging steps only: no host sync per step)
        return loss.detach() if isinstance(loss, torch.Tensor) else float(loss)

    def is_logging_step(self) -> bool:
        """Whether the training loop reads this step's loss (inside ``observe``: the step being run)."""
        return self.epoch_iteration % self.LOG_EVERY == 0

    def _may_have_unlabelled(self) -> bool:
        """Whether batches can hold samples labelled -1 that this (non-``cssl``) model must not see."""
        args = self.args
        return "cssl" not in self.COMPATIBILITY and (getattr(args, "label_perc_by_task", 1.0) < 1
                                                     or getattr(args, "label_perc_by_class", 1.0) < 1)

    def meta_end_epoch(self, epoch: int, dataset: Any) -> None:
        self.end_epoch(epoch, dataset)

    def meta_end_task(self, dataset: Any) -> None:
        self.end_task(dataset)
        self.current_task += 1

    def meta_end_eval(self, dataset: Any, accs: tuple[list[float], list[float]]) -> None:
        self.end_eval(dataset, accs)

    # ----- checkpoints ----------------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume after ``current_task`` tasks (tensors and plain types only).

        A replay buffer in ``self.buffer`` (Mammoth's convention) is saved too.
        """
        state = {"model": self.state_dict(), "current_task": self.current_task}
        buffer = getattr(self, "buffer", None)
        if isinstance(buffer, Buffer):
            state["buffer"] = buffer.state_dict()
        return state

    def load_checkpoint_state(self, state: dict[str, Any], dataset: Any) -> None:
        """Restore :meth:`checkpoint_state`. Models whose structure grows per task rebuild it first."""
        self.load_state_dict(state["model"])
        self.current_task = int(state["current_task"])
        buffer = getattr(self, "buffer", None)
        if isinstance(buffer, Buffer) and "buffer" in state:
            buffer.load_state_dict(state["buffer"], getattr(buffer, "device", None) or self.device)

    def lean_checkpoint_state(self) -> dict[str, Any]:
        """:meth:`checkpoint_state` without the tensors that still equal the pretrained backbone (their hash
        is kept); what is written to checkpoint files. A run without ``--seed`` keeps every tensor: its randomly
        initialised layers (a new classifier, random weights) could not be rebuilt to fill a lean state."""
        state = self.checkpoint_state()
        if getattr(self.args, "seed", None) is None:
            return state
        return self.pretrained_index.strip(state)

    def load_lean_checkpoint_state(self, state: dict[str, Any], dataset: Any, where: str = "") -> None:
        """Restore a :meth:`lean_checkpoint_state` on a freshly built model with the same pretrained weights
        (another backbone: a one-line :class:`UserError`)."""
        self.load_checkpoint_state(self.pretrained_index.fill(state, where), dataset)
