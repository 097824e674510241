"""``second_order``: ITA and IEL, *A Second-Order Perspective on Model Compositionality and Incremental
Learning* (Porrello et al., ICLR 2025). See docs/second_order.md and /work/shared/docs/algorithm.md.

One module (LoRA, full or (IA)^3) per task on the frozen pre-trained backbone; the evaluated model is
the merged average theta0 + (1/T) sum_t tau_t with the per-task heads concatenated. ITA trains
theta0 + tau_t with an EWC-like penalty anchored at theta0; IEL trains the average directly.
"""
from __future__ import annotations

import argparse
import copy
import sys
from typing import Any, Optional

import torch
import torch.nn.functional as F

from datasets.utils.debug import DEBUG_IMAGES
from models.second_order_utils import penalties as pen
from models.second_order_utils import stepping
from models.second_order_utils.fisher import (auto_batch_size, head_fisher, network_fisher, probe_bytes_per_image,
                                              reduce_fisher)
from models.second_order_utils.flags import CPU_STATS_BATCH, add_second_order_args
from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.modules import (ModulePool, frozen_batchnorms, inject_adapters,
                                               set_eval, uniform_weights)
from models.second_order_utils.gmm import fit_gmms_distributed
from models.second_order_utils.pretuning import (DiagonalGMM, align_classifier, linear_probe,
                                                 sample_features)
from models.utils.continual_model import ContinualModel
from utils import distributed, seeding
from utils.errors import UserError
from utils.killpoints import kill_point
from utils.modes import eval_mode

DEBUG_FISHER_CLASSES = 2  # --debug_mode: backward passes per Fisher batch (the images are capped by the loaders)


class SecondOrder(ContinualModel):
    """ITA (``--use_iel 0``) and IEL (``--use_iel 1``) with per-task modules on a frozen backbone."""

    NAME = "second_order"
    COMPATIBILITY = ["class-il", "task-il"]
    DEFAULTS = {"optimizer": "adamw", "pretrain_type": "in21k"}  # the paper's ViT-B/16 ImageNet-21k weights
    FIXED_USE_IEL: Optional[bool] = None  # set by the ``ita``/``iel`` names

    @staticmethod
    def get_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return add_second_order_args(parser)

    def __init__(self, backbone, loss, args, transform, dataset=None):
        super().__init__(backbone, loss, args, transform, dataset)
        if self.FIXED_USE_IEL is not None and bool(args.use_iel) != self.FIXED_USE_IEL:
            other = "iel" if args.use_iel else "ita"
            raise UserError(f"--model {self.NAME} fixes --use_iel {int(self.FIXED_USE_IEL)}; use --model {other}")
        inactive = "alpha_ita" if args.use_iel else "beta_iel"
        if getattr(args, inactive):
            print(f"warning: --{inactive} is ignored by {'IEL' if args.use_iel else 'ITA'} (mixed mode is not "
                  f"supported)", file=sys.stderr)
        for p in self.net.parameters():
            p.requires_grad_(False)
        total = self.net.classifier.out_features
        self.pool = ModulePool(inject_adapters(self.net.body, args.tuning_style, args.lora_r))
        self.net.classifier = IncrementalHead(self.net.feature_dim, total)
        self.pretuned_head = IncrementalHead(self.net.feature_dim, total)
        self._bn = frozen_batchnorms(self.net)
        self.gmms: dict[int, DiagonalGMM] = {}
        self.fisher_past: dict[str, torch.Tensor] = {}  # sum of F_s over finished tasks, per layer
        self.task_counts: list[int] = []  # N_s: images in the Fisher pass of each finished task
        self.eval_task_weights: Optional[list[float]] = None  # editing: weights of the composition
        self.last_penalties: dict[str, torch.Tensor] = {}  # 0-d device tensors, set on logging steps
        self._trainable: list[torch.nn.Parameter] = []
        self._in_task = False
        self._composition: Optional[str] = None
        self._accumulated, self._lr_scale = 0, 1.0
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # micro-batches of the open group
        self._last_loss: torch.Tensor | float = 0.0

    # ----- configuration --------------------------------------------------------------------------
    @property
    def use_iel(self) -> bool:
        return bool(self.args.use_iel)

    @property
    def adapter_strength(self) -> float:
        return self.args.beta_iel if self.use_iel else self.args.alpha_ita

    @property
    def head_strength(self) -> float:
        lam = self.args.req_weight_cls
        return self.adapter_strength if lam is None else lam

    @property
    def decoupled(self) -> bool:
        mode = self.args.penalty_step
        return mode == "decoupled" or (mode == "auto" and self.args.tuning_style != "full")

    @property
    def align_samples(self) -> int:
        """GMM samples per class for the alignment and the head Fisher (``--debug_mode``: as many as a pass's images)."""
        n = self.args.num_samples_align_pretuning
        return min(n, DEBUG_IMAGES) if self.args.debug_mode else n

    def get_parameters(self):
        return list(self._trainable)

    # ----- compositions ---------------------------------------------------------------------------
    def _compose_training(self) -> None:
        t = self.current_task
        if self.use_iel:
            self.pool.train_ensemble(t, self._past_sums)
        else:
            self.pool.train_individual(t)
        self._composition = "train"

    def compose_eval(self) -> None:
        """Merge theta0 + sum_s w_s tau_s into the weights (uniform 1/T unless ``eval_task_weights``)."""
        weights = self.eval_task_weights or uniform_weights(self.pool.n_tasks)
        self.pool.compose(weights)
        self._composition = "eval"

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "pool"):
            set_eval(self._bn)
            if not mode:
                self.compose_eval()
            elif self._in_task:
                self._compose_training()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self._composition != "eval":
            self.compose_eval()
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
            self.pool.use_base()
            self._composition = "base"
            with torch.no_grad():
                feats, labels = self._extract_features(dataset)
            self._fit_gmms(feats, labels, start, end)
            with seeding.seeded_for(self.args, t, "pretune", self.device):  # probe/alignment batches, GMM samples
                self._pretune(dataset, feats, labels)
            self._compute_fisher(dataset)
        set_eval(self._bn)
        self.pool.set_trainable(t)
        head = self.net.classifier.heads[t]
        if self.args.init_head_from_pretuned:
            head.load_state_dict(self.pretuned_head.heads[t].state_dict())
        self._trainable = self.pool.task_parameters(t) + list(head.parameters())
        self.opt = self.get_optimizer(self._trainable)
        self._in_task = True
        self._accumulated, self._pending = 0, []
        self._compose_training()

    def stats_batch_size(self, dataset) -> int:
        """``--stats_batch_size``, or auto: 64 on a CPU, on CUDA sized from the free memory and the measured
        memory per image of the Fisher pass (the results do not depend on it)."""
        if self.args.stats_batch_size is not None:
            return self.args.stats_batch_size
        if self.device.type != "cuda":
            return CPU_STATS_BATCH
        if getattr(self, "_auto_stats_batch", None) is None:
            x = next(iter(dataset.make_loader(dataset.train_dataset(self.current_task), shuffle=False,
                                              batch_size=8)))[0].to(self.device)
            per_image = probe_bytes_per_image(lambda v: self.pretuned_head.seen_logits(self.net.features(v)),
                                              self.pool.layers, x, self.args.fisher_precision)
            free, _ = torch.cuda.mem_get_info(self.device)
            self._auto_stats_batch = auto_batch_size(per_image, free)
        return self._auto_stats_batch

    def _stats_loader(self, dataset):
        """The current task's training images (augmented, as in the reference) in large batches."""
        return dataset.make_loader(dataset.train_dataset(self.current_task), shuffle=True,
                                   batch_size=self.stats_batch_size(dataset))

    def _extract_features(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for x, y, _ in self._stats_loader(dataset):
            with self.autocast():
                feats.append(self.net.features(x.to(self.device)).float())
            labels.append(y.to(self.device).long())
        feats, labels = torch.cat(feats), torch.cat(labels)
        if distributed.is_distributed():  # every rank fits the same GMMs / probe on all ranks' features
            feats, labels = distributed.all_gather_cat(feats), distributed.all_gather_cat(labels)
        return feats, labels

    def _fit_gmms(self, feats: torch.Tensor, labels: torch.Tensor, start: int, end: int) -> None:
        seed = 0 if self.args.seed is None else int(self.args.seed)
        # on the model's device, classes split over DDP ranks and the fits shared (models/second_order_utils/gmm.py)
        self.gmms.update(fit_gmms_distributed(feats, labels, list(range(start, end)), seed))

    def _pretune(self, dataset, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Linear probe of the new head, then alignment of all heads on GMM samples (frozen theta0)."""
        t, end = self.current_task, self.n_seen_classes
        probe = copy.deepcopy(self.pretuned_head)
        first = [(feats, labels)]  # the GMM pass's features serve as the first probe epoch

        def epoch_features():
            if first:
                f, y = first.pop()
            elif self.args.debug_mode:  # a smoke test: the one feature pass serves every probe epoch
                f, y = feats, labels
            else:
                with torch.no_grad():
                    f, y = self._extract_features(dataset)
            return f, y

        linear_probe(probe, epoch_features, self.n_past_classes, self.args.num_epochs_pretuning,
                     self.args.learning_rate_pretuning, self.args.batch_size_align_pretuning)
        align_classifier(probe, {c: g for c, g in self.gmms.items() if c < end},
                         self.args.num_epochs_align_pretuning + 5 * t, self.args.lr_align_pretuning,
                         self.align_samples, self.args.batch_size_align_pretuning)
        self.pretuned_head.load_state_dict(probe.state_dict())
        self.pretuned_head.requires_grad_(False)

    def _compute_fisher(self, dataset) -> None:
        """F_t at theta0 with the pre-tuned head on the task's real images; the head Fisher on GMM samples."""
        start, end, n_seen = self.n_past_classes, self.n_seen_classes, self.n_seen_classes

        def batches():
            for i, (x, _, _) in enumerate(self._stats_loader(dataset)):
                if i == 1:
                    kill_point("fisher", self.current_task + 1)  # test hook: mid-Fisher pass (after one batch)
                yield x.to(self.device)

        def logits(x):
            return self.pretuned_head.seen_logits(self.net.features(x))[:, :n_seen]

        # sampled labels: each rank draws its own for its own images (the sums are reduced below)
        gen = seeding.generator(seeding.run_seed(self.args), self.current_task, f"fisher_labels/{distributed.rank()}")
        mc_classes = self.args.fisher_mc_classes
        if self.args.debug_mode and not self.args.fisher_sampled_labels:  # a smoke test: k classes, not all
            mc_classes = min(mc_classes or DEBUG_FISHER_CLASSES, DEBUG_FISHER_CLASSES)
        fisher, n = network_fisher(logits, self.pool.layers, batches(), mc_classes,
                                   self.args.fisher_sampled_labels, gen, self.args.fisher_precision,
                                   mc_group=self.args.batch_size)
        # under DDP each rank saw a shard of the images: sum the sums and counts
        self.fisher_current, self.n_current = reduce_fisher(fisher, n)
        classes = list(range(end)) if not self.use_iel else list(range(start))
        with seeding.seeded_for(self.args, self.current_task, "head_fisher"):
            feats, _ = sample_features(self.gmms, self.align_samples,
                                       [c for c in classes if c in self.gmms])
        head = self.pretuned_head.heads[self.current_task]
        if len(feats):
            feats = feats.to(self.device)
            with torch.no_grad():
                fw, fb = head_fisher(feats, self.pretuned_head.seen_logits(feats), slice(start, end))
        else:
            fw, fb = torch.zeros_like(head.weight), torch.zeros_like(head.bias)
        self.head_fisher, self.n_head_fisher = (fw, fb), len(feats)
        n_past = sum(self.task_counts)
        if self.use_iel:
            self._penalty_fisher = {n: pen.iel_fisher(self.fisher_past.get(n, 0) + f, n_past + self.n_current)
                                    for n, f in self.fisher_current.items()}
        else:
            self._penalty_fisher = {n: pen.ita_fisher(self.fisher_past.get(n), n_past, f)
                                    for n, f in self.fisher_current.items()}

    # ----- training -------------------------------------------------------------------------------
    def begin_epoch(self, epoch: int, dataset) -> None:
        self._lr_scale = pen.lr_factor(epoch, self.args.n_epochs)
        if self.opt is not None:
            for group in self.opt.param_groups:
                group["lr"] = self.args.lr * self._lr_scale
            self.opt.zero_grad(set_to_none=True)
        self._accumulated, self._pending = 0, []
        set_eval(self._bn)

    def batches_per_epoch(self) -> int:
        """Micro-batches the training loop hands over in one epoch of the current task."""
        return len(self.dataset.train_loader)

    def group_size(self, index: int, n_batches: int) -> int:
        """Micro-batches in the optimizer step that micro-batch ``index`` belongs to (0: skipped)."""
        vbs = self.args.virtual_bs_n
        if self.args.debug_mode:  # the capped epoch may be shorter than one virtual batch: still take a step
            vbs = min(vbs, n_batches)
        full = (n_batches // vbs) * vbs
        if index < full:
            return vbs
        return 0 if self.args.vbs_tail == "drop" else n_batches - full

    def observe(self, inputs, labels, not_aug_inputs, epoch=None) -> torch.Tensor | float:
        """One micro-batch; every ``group_size`` micro-batches make one optimizer step.

        ``--vbs_mode batched`` keeps the group's micro-batches and runs them as one large batch at the
        group's last one (the same gradient as accumulating, one forward/backward); until then it returns
        the previous step's loss. ``accumulate`` runs a forward/backward per micro-batch. The loss is a 0-d
        device tensor (no host sync; the loop reads it on logging steps).
        """
        group = self.group_size(self.epoch_iteration, self.batches_per_epoch())
        if group == 0 or self.opt is None:
            return 0.0  # tail micro-batch under --vbs_tail drop: no compute, no step
        if self._bn and self._bn[0].training:
            set_eval(self._bn)
        self._group = group
        if self.args.vbs_mode == "accumulate" or group == 1:
            loss = self.group_backward([(inputs, labels)], group)
            self._accumulated += 1
            if self._accumulated == group:
                self.optimizer_step()
                self._accumulated = 0
            return loss
        self._pending.append((inputs, labels))
        if len(self._pending) < group:
            return self._last_loss
        self._accumulated = group
        try:
            self._last_loss = self.group_backward(self._pending, group)
        except torch.cuda.OutOfMemoryError:  # too large for one pass: accumulate this group instead
            self.opt.zero_grad(set_to_none=True)
            self._last_loss = torch.stack([self.group_backward([mb], group) for mb in self._pending]).mean()
        self._pending = []
        self.optimizer_step()
        self._accumulated = 0
        return self._last_loss

    def masked_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits of the seen classes with the past tasks' classes masked out (the current task's CE)."""
        logits = self.train_net(inputs)[:, :self.n_seen_classes]
        if self.n_past_classes:
            mask = torch.zeros_like(logits, dtype=torch.bool)
            mask[:, :self.n_past_classes] = True
            logits = logits.masked_fill(mask, float("-inf"))
        return logits

    def group_backward(self, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], group: int) -> torch.Tensor:
        """Backward of (1/group) sum_g mean CE(micro-batch g) over ``micro_batches`` (some or all of a step's
        ``group``) in one pass over their concatenation; returns the mean of their mean CEs (a detached 0-d
        tensor on the device)."""
        if len(micro_batches) == 1:
            inputs, labels = micro_batches[0]
            loss = F.cross_entropy(self.masked_logits(inputs).float(), labels)
            (loss / group).backward()
            return loss.detach()
        sizes = [len(y) for _, y in micro_batches]
        inputs = torch.cat([x for x, _ in micro_batches])
        labels = torch.cat([y for _, y in micro_batches])
        weights = torch.cat([torch.full((n,), 1.0 / (group * n), device=labels.device) for n in sizes])
        losses = F.cross_entropy(self.masked_logits(inputs).float(), labels, reduction="none")
        loss = (losses * weights).sum()
        loss.backward()
        return loss.detach() * (group / len(sizes))

    def is_logging_step(self) -> bool:
        """Whether the optimizer step now being run covers a micro-batch whose loss the loop logs."""
        last = self.epoch_iteration
        return any(i % self.LOG_EVERY == 0 for i in range(last - getattr(self, "_group", 1) + 1, last + 1))

    def adapter_penalty_grads(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        """Closed-form penalty gradient of the current module's parameters (fresh tensors); the penalty value
        (``last_penalties['adapter']``, a 0-d tensor) only on logging steps."""
        pairs, value = stepping.adapter_penalty_grads(self.pool, self.current_task, self._penalty_fisher,
                                                      self.use_iel, self.adapter_strength, self._past_sums,
                                                      with_value=self.is_logging_step())
        if value is not None:
            self.last_penalties["adapter"] = value
        return pairs

    def head_penalty_grads(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
        t = self.current_task
        head, target = self.net.classifier.heads[t], self.pretuned_head.heads[t]
        params = [head.weight, head.bias]
        with torch.enable_grad():
            value = pen.head_regularizer(params, [target.weight, target.bias], list(self.head_fisher),
                                         self.n_head_fisher, self.head_strength, self.args.simple_reg_weight_cls)
            grads = torch.autograd.grad(value, params)
        if self.is_logging_step():
            self.last_penalties["head"] = value.detach()
        return list(zip(params, grads))

    def optimizer_step(self) -> None:
        """Penalty step (decoupled: p -= s_e clip(g_R); coupled: .grad += clip(g_R)), then AdamW; no host sync.

        Penalties are computed in fp32 even inside the bf16 training autocast."""
        penalty = []
        with torch.autocast(device_type=self.device.type, enabled=False):
            if self.adapter_strength > 0:
                penalty += self.adapter_penalty_grads()
            if self.head_strength > 0:  # Q7: lambda_F = 0 disables the L2 term as well
                penalty += self.head_penalty_grads()
        stepping.apply_penalty_(penalty, self.args.clip_grad, self.decoupled, self._lr_scale)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def end_epoch(self, epoch: int, dataset) -> None:
        if self._accumulated and self.opt is not None:  # never happens with a known epoch length
            self.opt.zero_grad(set_to_none=True)
        self._accumulated, self._pending = 0, []

    # ----- task end, checkpoints ------------------------------------------------------------------
    def end_task(self, dataset) -> None:
        for name, fisher in self.fisher_current.items():
            self.fisher_past[name] = self.fisher_past[name] + fisher if name in self.fisher_past else fisher
        self.task_counts.append(int(self.n_current))
        self.fisher_current, self._penalty_fisher, self._past_sums = {}, {}, {}
        self.pool.set_trainable(None)
        self.net.classifier.requires_grad_(False)
        self._trainable, self._in_task = [], False
        self.opt = None
        self.compose_eval()

    def checkpoint_state(self) -> dict[str, Any]:
        """The modules and heads; plus, while tasks remain, what only later tasks read (Fisher sums, counts,
        GMMs: 0.32 GiB on ViT-B/16). After the dataset's last task nothing reads them and they are left out."""
        state = {"model": self.state_dict(), "current_task": self.current_task,
                 "head_sizes": self.net.classifier.sizes}
        if self.dataset is None or self.current_task < self.dataset.N_TASKS:
            state.update(fisher_past=dict(self.fisher_past), task_counts=list(self.task_counts),
                         gmms={str(c): g.state() for c, g in self.gmms.items()})
        return state

    def load_checkpoint_state(self, state: dict[str, Any], dataset) -> None:
        for size in state["head_sizes"][len(self.net.classifier.sizes):]:
            self.net.classifier.add_task(size)
            self.pretuned_head.add_task(size)
            self.pool.add_task()
        self.load_state_dict(state["model"])
        self.current_task = int(state["current_task"])
        # absent after the last task (nothing left to train reads them)
        self.fisher_past = {k: v.to(self.device) for k, v in state.get("fisher_past", {}).items()}
        self.task_counts = [int(n) for n in state.get("task_counts", [])]
        self.gmms = {int(c): DiagonalGMM.from_state({k: v.to(self.device) for k, v in g.items()})
                     for c, g in state.get("gmms", {}).items()}
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
