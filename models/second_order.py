"""``second_order``: ITA and IEL, *A Second-Order Perspective on Model Compositionality and Incremental
Learning* (Porrello et al., ICLR 2025). See docs/second_order.md and the offline assets' docs/algorithm.md.

One module (LoRA, full or (IA)^3) per task on the frozen pre-trained backbone; the evaluated model is
the merged average theta0 + (1/T) sum_t tau_t with the per-task heads concatenated. ITA trains
theta0 + tau_t with an EWC-like penalty anchored at theta0; IEL trains the average directly.

This file holds the method's hooks; the parts live in ``models/second_order_utils``: ``task_stats`` (features,
GMMs, probe/alignment, Fisher at theta0), ``stepping`` (virtual batches, penalty step), ``composition`` (which
weights the layers compute with, switched explicitly here), ``flags`` (the typed settings).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

import torch

from models.second_order_utils import penalties as pen
from models.second_order_utils import stepping
from models.second_order_utils.composition import TRAIN, Composition
from models.second_order_utils.flags import SecondOrderSettings, add_second_order_args, resolve_fisher_precision
from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.modules import ModulePool, frozen_batchnorms, inject_adapters, set_eval
from models.second_order_utils.pretuning import DiagonalGMM
from models.second_order_utils.task_stats import TaskStatistics
from models.utils.continual_model import ContinualModel
from utils import seeding
from utils.errors import UserError
from utils.optimization import COMPILE_LEVEL, compiled, run_device_type
from utils.modes import eval_mode


class SecondOrder(ContinualModel):
    """ITA (``--use_iel 0``) and IEL (``--use_iel 1``) with per-task modules on a frozen backbone."""

    NAME = "second_order"
    COMPATIBILITY = ["class-il", "task-il"]
    DEFAULTS = {"optimizer": "adamw", "pretrain_type": "in21k"}  # the paper's ViT-B/16 ImageNet-21k weights
    SETTINGS = SecondOrderSettings
    settings: SecondOrderSettings
    # TF32 training and evaluation matmuls on CUDA (with the bf16x3 Fisher of DEFAULT_FISHER_PRECISIONS): the rule
    # fixed before measuring and its numbers in docs/speed.md
    DEFAULT_LEVELS = {"cuda": 1}
    FIXED_USE_IEL: Optional[bool] = None  # set by the ``ita``/``iel`` names

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return add_second_order_args(parser)

    @classmethod
    def resolve_args(cls, args: argparse.Namespace) -> None:
        resolve_fisher_precision(args, run_device_type(args))

    def __init__(self, backbone, loss, args, transform, dataset=None):
        self.resolve_args(args)  # arguments not built by app.config.parse_args
        super().__init__(backbone, loss, args, transform, dataset)
        s = self.settings
        if self.FIXED_USE_IEL is not None and bool(s.use_iel) != self.FIXED_USE_IEL:
            other = "iel" if s.use_iel else "ita"
            raise UserError(f"--model {self.NAME} fixes --use_iel {int(self.FIXED_USE_IEL)}; use --model {other}")
        inactive = "alpha_ita" if s.use_iel else "beta_iel"
        if getattr(s, inactive):
            print(f"warning: --{inactive} is ignored by {'IEL' if s.use_iel else 'ITA'} (mixed mode is not "
                  f"supported)", file=sys.stderr)
        for p in self.net.parameters():
            p.requires_grad_(False)
        total = self.net.classifier.out_features
        self.pool = ModulePool(inject_adapters(self.net.body, s.tuning_style, s.lora_r))
        self.net.classifier = IncrementalHead(self.net.feature_dim, total)
        self.pretuned_head = IncrementalHead(self.net.feature_dim, total)
        self._bn = frozen_batchnorms(self.net)
        self.composition = Composition(self.pool)
        self.stats = TaskStatistics(self.net, self.pool, self.pretuned_head, s, args, self.autocast)
        self.vbatches = stepping.VirtualBatches()
        self.eval_task_weights: Optional[list[float]] = None  # editing: weights of the composition
        self.last_penalties: dict[str, torch.Tensor] = {}  # 0-d device tensors, set on logging steps
        self._trainable: list[torch.nn.Parameter] = []
        self._past_sums: dict[str, Optional[torch.Tensor]] = {}  # IEL: sum_{s<t} dW_s per layer
        self._in_task = False
        self._lr_scale = 1.0

    # ----- configuration --------------------------------------------------------------------------
    @property
    def use_iel(self) -> bool:
        return bool(self.settings.use_iel)

    @property
    def adapter_strength(self) -> float:
        return self.settings.beta_iel if self.use_iel else self.settings.alpha_ita

    @property
    def head_strength(self) -> float:
        lam = self.settings.req_weight_cls
        return self.adapter_strength if lam is None else lam

    @property
    def decoupled(self) -> bool:
        mode = self.settings.penalty_step
        return mode == "decoupled" or (mode == "auto" and self.settings.tuning_style != "full")

    @property
    def gmms(self) -> dict[int, DiagonalGMM]:
        return self.stats.gmms

    @property
    def fisher_past(self) -> dict[str, torch.Tensor]:
        return self.stats.fisher_past

    @property
    def task_counts(self) -> list[int]:
        return self.stats.task_counts

    def get_parameters(self):
        return list(self._trainable)

    # ----- compositions (explicit: begin_task, observe, forward, end_task, checkpoint loading) ----------------
    def compose_training(self) -> None:
        self.composition.use_training(self.current_task, self.use_iel, self._past_sums)

    def compose_eval(self) -> None:
        """Merge theta0 + sum_s w_s tau_s into the weights (uniform 1/T unless ``eval_task_weights``)."""
        self.composition.use_eval(self.eval_task_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and not self.composition.is_eval(self.eval_task_weights):
            self.compose_eval()  # after training, or after new eval_task_weights (editing)
        return self.net(x)

    # ----- task start -----------------------------------------------------------------------------
    def begin_task(self, dataset) -> None:
        t, start, end = self.current_task, self.n_past_classes, self.n_seen_classes
        with seeding.seeded_for(self.args, t, "init", self.device):  # head and module inits: same on every rank
            self.net.classifier.add_task(end - start)
            self.pretuned_head.add_task(end - start)
            self.pool.add_task()
        self.pool.set_trainable(None)
        self._past_sums = {n: self.pool.weighted_sum(n, [1.0] * t) for n in self.pool.layers} if t else {}
        set_eval(self._bn)
        with eval_mode(self.net):
            self.composition.use_base()
            self.stats.measure(dataset, t, start, end, self.use_iel)
        set_eval(self._bn)
        self.pool.set_trainable(t)
        head = self.net.classifier.heads[t]
        if self.settings.init_head_from_pretuned:
            head.load_state_dict(self.pretuned_head.heads[t].state_dict())
        self._trainable = self.pool.task_parameters(t) + list(head.parameters())
        self.opt = self.get_optimizer(self._trainable)
        self._in_task = True
        self.vbatches.reset()
        self.compose_training()

    # ----- training -------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, dataset) -> None:
        self._lr_scale = pen.lr_factor(epoch, self.args.n_epochs)
        if self.opt is not None:
            for group in self.opt.param_groups:
                group["lr"] = self.args.lr * self._lr_scale
            self.opt.zero_grad(set_to_none=True)
        self.vbatches.reset()
        set_eval(self._bn)

    def batches_per_epoch(self) -> int:
        """Micro-batches the training loop hands over in one epoch of the current task."""
        return len(self.dataset.train_loader)

    def group_size(self, index: int, n_batches: int) -> int:
        """Micro-batches in the optimizer step that micro-batch ``index`` belongs to (0: skipped)."""
        s = self.settings
        return stepping.group_size(index, n_batches, s.virtual_bs_n, s.vbs_tail, bool(self.args.debug_mode))

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> torch.Tensor | float:
        """One micro-batch; every ``group_size`` micro-batches make one optimizer step (:class:`VirtualBatches`).

        The loss is a 0-d device tensor (no host sync; the loop reads it on logging steps)."""
        group = self.group_size(self.epoch_iteration, self.batches_per_epoch())
        if group == 0 or self.opt is None:
            return 0.0  # tail micro-batch under --vbs_tail drop: no compute, no step
        if self._bn and self._bn[0].training:  # model.train() puts them in training mode: frozen statistics
            set_eval(self._bn)
        if self.composition.state != TRAIN:  # after an evaluation inside the task
            self.compose_training()
        return self.vbatches.observe(inputs, labels, group, self.settings.vbs_mode, self.group_backward,
                                     lambda: self.optimizer_step(), lambda: self.opt.zero_grad(set_to_none=True))

    @property
    def train_net(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The training forward; under ``-O 3`` the body is compiled once for the run (the adapted layers read
        the task's composition as tensors) and the heads, one more per task, run eagerly after it."""
        if self.code_optimization < COMPILE_LEVEL:
            return self.net
        if self.__dict__.get("_compiled_net") is None:  # (outside the module tree: state dicts unchanged)
            body, net = compiled(self.net.body), self.net
            self.__dict__["_compiled_net"] = lambda x: net.classifier(body(x))
        return self.__dict__["_compiled_net"]

    def masked_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of the seen classes with the past tasks' classes masked out (the current task's CE)."""
        logits = self.train_net(inputs)[:, :self.n_seen_classes]
        if self.n_past_classes:
            mask = torch.zeros_like(logits, dtype=torch.bool)
            mask[:, :self.n_past_classes] = True
            logits = logits.masked_fill(mask, float("-inf"))
        return logits

    def group_backward(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], group: int) -> torch.Tensor:
        """:func:`stepping.group_backward` of the masked cross-entropy."""
        return stepping.group_backward(self.masked_logits, micro_batches, group)

    def is_logging_step(self) -> bool:
        """Whether the optimizer step now being run covers a micro-batch whose loss the loop logs."""
        last = self.epoch_iteration
        return any(i % self.LOG_EVERY == 0 for i in range(last - self.vbatches.group + 1, last + 1))

    def adapter_penalty_grads(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """Closed-form penalty gradient of the current module's parameters (fresh tensors); the penalty value
        (``last_penalties['adapter']``, a 0-d tensor) only on logging steps."""
        pairs, value = stepping.adapter_penalty_grads(self.pool, self.current_task, self.stats.penalty_fisher,
                                                      self.use_iel, self.adapter_strength, self._past_sums,
                                                      with_value=self.is_logging_step())
        if value is not None:
            self.last_penalties["adapter"] = value
        return pairs

    def head_penalty_grads(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        t = self.current_task
        pairs, value = stepping.head_penalty_grads(
            self.net.classifier.heads[t], self.pretuned_head.heads[t], self.stats.head_fisher,
            self.stats.n_head_fisher, self.head_strength, self.settings.simple_reg_weight_cls)
        if self.is_logging_step():
            self.last_penalties["head"] = value
        return pairs

    def optimizer_step(self) -> None:
        """Penalty step (decoupled: p -= s_e clip(g_R); coupled: .grad += clip(g_R)), then AdamW; no host sync.

        Penalties are computed in fp32 even inside the bf16 training autocast."""
        penalty = []
        with torch.autocast(device_type=self.device.type, enabled=False):
            if self.adapter_strength > 0:
                penalty += self.adapter_penalty_grads()
            if self.head_strength > 0:  # Q7: lambda_F = 0 disables the L2 term as well
                penalty += self.head_penalty_grads()
        stepping.apply_penalty_(penalty, self.settings.clip_grad, self.decoupled, self._lr_scale)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def end_epoch(self, epoch: int, dataset) -> None:
        if self.vbatches.accumulated and self.opt is not None:  # never happens with a known epoch length
            self.opt.zero_grad(set_to_none=True)
        self.vbatches.reset()

    # ----- task end, checkpoints ------------------------------------------------------------------
    def end_task(self, dataset) -> None:
        self.stats.end_task()
        self._past_sums = {}
        self.pool.set_trainable(None)
        self.net.classifier.requires_grad_(False)
        self._trainable, self._in_task = [], False
        self.opt = None
        self.compose_eval()
        if self.settings.use_ca:  # opt-in: re-align the trained heads on the composition's features
            set_eval(self._bn)
            with eval_mode(self.net):
                self.stats.align_trained_heads(dataset, self.net.classifier)

    def checkpoint_state(self) -> dict[str, Any]:
        """The modules and heads; plus, while tasks remain, what only later tasks read (Fisher sums, counts,
        GMMs: 0.32 GiB on ViT-B/16). After the dataset's last task nothing reads them and they are left out."""
        state = {"model": self.state_dict(), "current_task": self.current_task,
                 "head_sizes": self.net.classifier.sizes}
        if self.dataset is None or self.current_task < self.dataset.N_TASKS:
            state.update(self.stats.state())
        return state

    def load_checkpoint_state(self, state: dict[str, Any], dataset) -> None:
        for size in state["head_sizes"][len(self.net.classifier.sizes):]:
            self.net.classifier.add_task(size)
            self.pretuned_head.add_task(size)
            self.pool.add_task()
        self.load_state_dict(state["model"])
        self.current_task = int(state["current_task"])
        self.stats.load_state(state)  # (no Fisher sums, counts or GMMs after the last task: nothing reads them)
        self.pool.set_trainable(None)
        self.net.classifier.requires_grad_(False)
        self.pretuned_head.requires_grad_(False)
        self.compose_eval()


class ITA(SecondOrder):
    """``--model ita``: second_order with ``--use_iel 0``."""

    NAME = "ita"
    DEFAULTS = {**SecondOrder.DEFAULTS, "use_iel": False}
    FIXED_USE_IEL = False


class IEL(SecondOrder):
    """``--model iel``: second_order with ``--use_iel 1``."""

    NAME = "iel"
    DEFAULTS = {**SecondOrder.DEFAULTS, "use_iel": True}
    FIXED_USE_IEL = True
