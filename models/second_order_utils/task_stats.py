"""The statistics ITA/IEL measure at theta0 at the start of each task, and those they keep across tasks.

Per task (``measure``, in this order, with the network at theta0 in eval mode): the features of the task's training
images, one diagonal GMM per new class, the linear probe of the new head and the alignment of all heads on GMM
samples (the pre-tuned head), the exact Fisher F_t of the adapted layers on the real images and the head Fisher on
GMM samples, and from them the Fisher the penalty uses. Across tasks: the GMMs, sum_s F_s and the image counts N_s.
"""
from __future__ import annotations

import argparse
import copy
from typing import Any, Callable, ContextManager, Optional

import torch

from datasets.utils.debug import DEBUG_IMAGES
from models.second_order_utils import penalties as pen
from models.second_order_utils.fisher import head_fisher, network_fisher, probe_bytes_per_image, reduce_fisher
from models.second_order_utils.flags import CPU_STATS_BATCH, SecondOrderSettings
from models.second_order_utils.gmm import fit_gmms_distributed
from models.second_order_utils.heads import IncrementalHead
from models.second_order_utils.modules import ModulePool
from models.second_order_utils.alignment import align_classifier
from models.second_order_utils.pretuning import DiagonalGMM, linear_probe, sample_features
from utils import accelerator, distributed, seeding
from utils.killpoints import kill_point

DEBUG_FISHER_CLASSES = 2  # --debug_mode: backward passes per Fisher batch (the images are capped by the loaders)
PROBE_IMAGES = 8  # images of the automatic --stats_batch_size's memory probe (global, split over DDP ranks)


class TaskStatistics:
    """theta0 statistics of the current task (``measure``) and of the finished ones (``end_task``).

    Holds references to the model's backbone ``net`` (its ``features``), the module ``pool`` and the
    ``pretuned_head`` (registered on the model, so saved with its state dict); ``args`` gives the run's seed,
    ``--debug_mode`` and ``--batch_size``; ``autocast`` is the model's training autocast (features only).
    """

    def __init__(self, net: torch.nn.Module, pool: ModulePool, pretuned_head: IncrementalHead,
                 settings: SecondOrderSettings, args: argparse.Namespace, autocast: Callable[[], ContextManager]):
        self.net, self.pool, self.pretuned_head = net, pool, pretuned_head
        self.settings, self.args, self.autocast = settings, args, autocast
        # kept across tasks
        self.gmms: dict[int, DiagonalGMM] = {}
        self.composed_gmms: dict[int, DiagonalGMM] = {}  # --use_ca: fitted on the composition at each task end
        self.fisher_past: dict[str, torch.Tensor] = {}  # sum of F_s over finished tasks, per layer
        self.task_counts: list[int] = []  # N_s: images in the Fisher pass of each finished task
        self.auto_stats_batch: Optional[int] = None
        # of the current task
        self.task, self.start, self.end, self.use_iel = 0, 0, 0, False
        self.fisher_current: dict[str, torch.Tensor] = {}
        self.n_current = 0
        self.head_fisher: tuple[torch.Tensor, torch.Tensor] = (torch.zeros(0), torch.zeros(0))
        self.n_head_fisher = 0
        self.penalty_fisher: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def align_samples(self) -> int:
        """GMM samples per class for the alignment and the head Fisher (``--debug_mode``: as many as a pass's images)."""
        n = self.settings.num_samples_align_pretuning
        return min(n, DEBUG_IMAGES) if self.args.debug_mode else n

    # ----- the begin_task pass --------------------------------------------------------------------
    def measure(self, dataset: Any, task: int, start: int, end: int, use_iel: bool) -> None:
        """Features -> GMMs -> probe + alignment -> Fisher for ``task`` (classes ``start..end-1``); the caller has
        put the network at theta0 in eval mode."""
        self.task, self.start, self.end, self.use_iel = task, start, end, use_iel
        with torch.no_grad():
            feats, labels = self.extract_features(dataset)
        self.fit_gmms(feats, labels)
        with seeding.seeded_for(self.args, task, "pretune", self.device):  # probe/alignment batches, GMM samples
            self.pretune(dataset, feats, labels)
        self.compute_fisher(dataset)

    def stats_batch_size(self, dataset: Any) -> int:
        """``--stats_batch_size``, or auto: 64 on a CPU (or a device that does not report its free memory), on an
        accelerator sized from the free memory and the measured memory per image of the Fisher pass, the smallest
        over the DDP ranks (the sharded loaders must cut the same global batches). Measured once per run, at the
        first task; the results do not depend on it."""
        if self.settings.stats_batch_size is not None:
            return self.settings.stats_batch_size
        if self.auto_stats_batch is None:
            size = CPU_STATS_BATCH
            if accelerator.free_memory(self.device) is not None:
                per_image = probe_bytes_per_image(lambda v: self.pretuned_head.seen_logits(self.net.features(v)),
                                                  self.pool.layers, self.probe_images(dataset),
                                                  self.settings.fisher_precision)
                if per_image is not None:
                    size = accelerator.batch_for_memory(self.device, per_image, CPU_STATS_BATCH)
            self.auto_stats_batch = distributed.min_over_ranks(size)
        return self.auto_stats_batch

    def probe_images(self, dataset: Any, n: int = PROBE_IMAGES) -> torch.Tensor:
        """``n`` training images of the task on the device, augmented as the statistics passes see them (a loader
        that takes no place among the task's shuffled loaders: no later draw changes)."""
        loader = dataset.make_loader(dataset.train_dataset(self.task), shuffle=True, batch_size=n, counted=False)
        return next(iter(loader))[0].to(self.device)

    def stats_loader(self, dataset: Any) -> Any:
        """The current task's training images (augmented, as in the reference) in large batches."""
        return dataset.make_loader(dataset.train_dataset(self.task), shuffle=True,
                                   batch_size=self.stats_batch_size(dataset))

    def extract_features(self, dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
        feats, labels = [], []
        for x, y, _ in self.stats_loader(dataset):
            with self.autocast():
                feats.append(self.net.features(x.to(self.device)).float())
            labels.append(y.to(self.device).long())
        # every rank fits the same GMMs / probe on all ranks' features, in the order of a single-process pass
        return distributed.gather_batches(feats), distributed.gather_batches(labels)

    def fit_gmms(self, feats: torch.Tensor, labels: torch.Tensor,
                 into: Optional[dict[int, DiagonalGMM]] = None) -> None:
        """One GMM per class of the current task (into ``gmms`` unless ``into``), on the model's device, classes
        split over DDP ranks and the fits shared (models/second_order_utils/gmm.py)."""
        seed = 0 if self.args.seed is None else int(self.args.seed)
        target = self.gmms if into is None else into
        target.update(fit_gmms_distributed(feats, labels, list(range(self.start, self.end)), seed))

    def pretune(self, dataset: Any, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Linear probe of the new head, then alignment of all heads on GMM samples (frozen theta0)."""
        s = self.settings
        probe = copy.deepcopy(self.pretuned_head)
        first = [(feats, labels)]  # the GMM pass's features serve as the first probe epoch

        def epoch_features():
            if first:
                f, y = first.pop()
            elif self.args.debug_mode:  # a smoke test: the one feature pass serves every probe epoch
                f, y = feats, labels
            else:
                with torch.no_grad():
                    f, y = self.extract_features(dataset)
            return f, y

        linear_probe(probe, epoch_features, self.start, s.num_epochs_pretuning, s.learning_rate_pretuning,
                     s.batch_size_align_pretuning)
        align_classifier(probe, {c: g for c, g in self.gmms.items() if c < self.end},
                         s.num_epochs_align_pretuning + 5 * self.task, s.lr_align_pretuning,
                         self.align_samples, s.batch_size_align_pretuning)
        self.pretuned_head.load_state_dict(probe.state_dict())
        self.pretuned_head.requires_grad_(False)

    def compute_fisher(self, dataset: Any) -> None:
        """F_t at theta0 with the pre-tuned head on the task's real images; the head Fisher on GMM samples; the
        penalty's Fisher (ITA: Eq. 11-12, IEL: Eq. 18-19)."""
        s, start, end = self.settings, self.start, self.end

        def batches():
            for i, (x, _, _) in enumerate(self.stats_loader(dataset)):
                if i == 1:
                    kill_point("fisher", self.task + 1)  # test hook: mid-Fisher pass (after one batch)
                yield x.to(self.device)

        def logits(x):
            return self.pretuned_head.seen_logits(self.net.features(x))[:, :end]

        # sampled labels: each rank draws its own for its own images (the sums are reduced below)
        gen = seeding.generator(seeding.run_seed(self.args), self.task, f"fisher_labels/{distributed.rank()}")
        mc_classes = s.fisher_mc_classes
        if self.args.debug_mode and not s.fisher_sampled_labels:  # a smoke test: k classes, not all
            mc_classes = min(mc_classes or DEBUG_FISHER_CLASSES, DEBUG_FISHER_CLASSES)
        fisher, n = network_fisher(logits, self.pool.layers, batches(), mc_classes, s.fisher_sampled_labels, gen,
                                   s.fisher_precision, mc_group=self.args.batch_size,
                                   class_batch=s.fisher_class_batch)
        # under DDP each rank saw a shard of the images: sum the sums and counts
        self.fisher_current, self.n_current = reduce_fisher(fisher, n)
        classes = list(range(end)) if not self.use_iel else list(range(start))
        with seeding.seeded_for(self.args, self.task, "head_fisher", self.device):  # samples drawn on the device
            feats, _ = sample_features(self.gmms, self.align_samples, [c for c in classes if c in self.gmms])
        head = self.pretuned_head.heads[self.task]
        if len(feats):
            feats = feats.to(self.device)
            with torch.no_grad():
                fw, fb = head_fisher(feats, self.pretuned_head.seen_logits(feats), slice(start, end))
        else:
            fw, fb = torch.zeros_like(head.weight), torch.zeros_like(head.bias)
        self.head_fisher, self.n_head_fisher = (fw, fb), len(feats)
        n_past = sum(self.task_counts)
        if self.use_iel:
            self.penalty_fisher = {name: pen.iel_fisher(self.fisher_past.get(name, 0) + f, n_past + self.n_current)
                                   for name, f in self.fisher_current.items()}
        else:
            self.penalty_fisher = {name: pen.ita_fisher(self.fisher_past.get(name), n_past, f)
                                   for name, f in self.fisher_current.items()}

    def align_trained_heads(self, dataset: Any, head: IncrementalHead) -> None:
        """``--use_ca``: GMMs of the current task's classes on the features of the network as it is now (the caller
        has composed it for evaluation), then all of ``head`` aligned on samples of every seen class's composed-model
        GMMs, with the pre-tuning alignment's loss, epochs (+5t) and learning rate."""
        s = self.settings
        with torch.no_grad():
            feats, labels = self.extract_features(dataset)
        self.fit_gmms(feats, labels, into=self.composed_gmms)
        with seeding.seeded_for(self.args, self.task, "end_task_alignment", self.device):
            align_classifier(head, {c: g for c, g in self.composed_gmms.items() if c < self.end},
                             s.num_epochs_align_pretuning + 5 * self.task, s.lr_align_pretuning,
                             self.align_samples, s.batch_size_align_pretuning)
        head.requires_grad_(False)

    # ----- across tasks ---------------------------------------------------------------------------
    def end_task(self) -> None:
        """Add F_t and N_t to the finished tasks' sums; forget the current task's Fisher."""
        for name, fisher in self.fisher_current.items():
            self.fisher_past[name] = self.fisher_past[name] + fisher if name in self.fisher_past else fisher
        self.task_counts.append(int(self.n_current))
        self.fisher_current, self.penalty_fisher = {}, {}

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (the keys of the model's checkpoint state)."""
        state = {"fisher_past": dict(self.fisher_past), "task_counts": list(self.task_counts),
                 "gmms": {str(c): g.state() for c, g in self.gmms.items()}}
        if self.composed_gmms:
            state["composed_gmms"] = {str(c): g.state() for c, g in self.composed_gmms.items()}
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        device = self.device
        # absent from the checkpoint after the dataset's last task (SecondOrder.checkpoint_state)
        self.fisher_past = {k: v.to(device) for k, v in state.get("fisher_past", {}).items()}
        self.task_counts = [int(n) for n in state.get("task_counts", [])]
        self.gmms, self.composed_gmms = ({int(c): DiagonalGMM.from_state({k: v.to(device) for k, v in g.items()})
                                          for c, g in state.get(key, {}).items()}
                                         for key in ("gmms", "composed_gmms"))
