"""Per-phase figures of a second_order task for benchmarks/speed.py: wall time and FLOPs of the ``begin_task``
phases (feature pass, GMM fits, probe + alignment, Fisher), loader throughput, host syncs per optimizer step and
the projected time of a whole run from the per-task figures."""
from __future__ import annotations

import copy
import os
import random
import sys
import time
from typing import Any, Callable, Optional

import numpy as np
import torch

from utils import accelerator

PHASES = ("features", "gmm_fits", "probe_alignment", "fisher")
# methods of the model's TaskStatistics (models/second_order_utils/task_stats.py) -> phase
METHODS = {"extract_features": "features", "fit_gmms": "gmm_fits", "pretune": "probe_alignment",
           "compute_fisher": "fisher"}
SYNCING = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "nonzero", "__format__")
TORCH_DIR = os.path.dirname(torch.__file__)
LOADER_BATCHES = 30  # batches read to measure the loader


def _sync(device: torch.device) -> None:
    accelerator.synchronize(device)


class PhaseTimer:
    """Wraps the phase methods of the model's statistics object (on the instance) and adds their wall time per task;
    a phase called inside another (the probe's feature re-extraction) counts to the outer one."""

    def __init__(self, model: Any, device: torch.device):
        self.model, self.device = model, device
        self.seconds: dict[int, dict[str, float]] = {}
        self.task: Optional[int] = None
        self._depth = 0
        for name, phase in METHODS.items():
            setattr(model.stats, name, self._wrap(getattr(model.stats, name), phase))

    def start_task(self, task: int) -> None:
        self.task = task
        self.seconds[task] = {p: 0.0 for p in PHASES}

    def _wrap(self, original: Callable, phase: str) -> Callable:
        def timed(*args, **kwargs):
            if self._depth or self.task is None:
                return original(*args, **kwargs)
            self._depth += 1
            _sync(self.device)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                _sync(self.device)
                self.seconds[self.task][phase] += time.perf_counter() - start
                self._depth -= 1
        return timed

    def remove(self) -> None:
        for name in METHODS:
            self.model.stats.__dict__.pop(name, None)


class _RngGuard:
    """Saves and restores every random stream (torch CPU/accelerator, numpy, random)."""

    def __enter__(self):
        self.state = (torch.get_rng_state(), accelerator.rng_states(),
                      np.random.get_state(), random.getstate())
        return self

    def __exit__(self, *exc):
        cpu, device, npy, py = self.state
        torch.set_rng_state(cpu)
        accelerator.set_rng_states(device)
        np.random.set_state(npy)
        random.setstate(py)


def model_copy(model: Any) -> Any:
    """A deep copy of ``model`` that shares its dataset (whose loaders may hold worker processes, which cannot be
    copied)."""
    dataset = getattr(model, "dataset", None)
    return copy.deepcopy(model, memo={} if dataset is None else {id(dataset): dataset})


def phase_flops(model: Any, dataset: Any) -> dict[str, float]:
    """FLOPs (torch.utils.flop_counter: matmuls and convolutions) of each begin_task phase, re-run after
    ``begin_task`` on a copy of the model; the run's state and random streams are left untouched."""
    from torch.utils.flop_counter import FlopCounterMode
    out: dict[str, float] = {}
    with _RngGuard():
        m = model_copy(model)
        stats = m.stats
        for name in METHODS:
            stats.__dict__.pop(name, None)  # the copy runs its own methods, not the timer's wrappers
        was_training = m.net.training
        m.net.eval()
        m.composition.use_base()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            feats, labels = stats.extract_features(dataset)
        out["features"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            stats.fit_gmms(feats, labels)
        out["gmm_fits"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            stats.pretune(dataset, feats, labels)
        out["probe_alignment"] = float(counter.get_total_flops())
        with FlopCounterMode(display=False) as counter:
            stats.compute_fisher(dataset)
        out["fisher"] = float(counter.get_total_flops())
        m.net.train(was_training)
        del m
    return out


def loader_images_per_s(dataset: Any, task: int = 0) -> tuple[float, int]:
    """Images/s of a fresh train loader of ``task`` (default workers, as training uses), and how many were read."""
    with _RngGuard():
        loader = dataset.make_loader(dataset.train_dataset(task), shuffle=True)
        n, start = 0, time.perf_counter()
        for i, batch in enumerate(loader):
            n += len(batch[0])
            if i + 1 >= LOADER_BATCHES:
                break
        seconds = time.perf_counter() - start
        del loader
    return n / seconds, n


class SyncCounter:
    """Counts the Tensor calls that copy device data to the host (on a GPU: a synchronisation) made from outside
    torch, except the samplers' shuffling of CPU index tensors. Use as a context manager."""

    def __init__(self):
        self.count = 0
        self._saved: dict[str, Callable] = {}

    def __enter__(self) -> "SyncCounter":
        for name in SYNCING:
            self._saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(self._saved[name]))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()

    def _wrap(self, original: Callable) -> Callable:
        def counted(tensor, *args, **kwargs):
            frame = sys._getframe(1)
            host_side = isinstance(frame.f_locals.get("self"), torch.utils.data.Sampler)
            if not frame.f_code.co_filename.startswith(TORCH_DIR) and not host_side:
                self.count += 1
            return original(tensor, *args, **kwargs)
        return counted


def count_host_syncs(model: Any, batch: tuple, device: torch.device, steps: int = 4) -> float:
    """Host syncs per optimizer step: those inside ``steps`` steps (``meta_observe``) plus the training loop's one
    read of the loss every ``LOG_EVERY`` steps."""
    x, y, nx = (t.to(device) for t in batch)
    model.train()
    with SyncCounter() as counter:
        for _ in range(steps):
            model.epoch_iteration = 1  # not a logging step
            model.meta_observe(x, y, nx)
    return counter.count / steps + 1.0 / model.LOG_EVERY


def projected_run_seconds(res: dict, project: Optional[dict] = None) -> float:
    """Whole-run time from the per-task figures: the begin_task phases interpolated linearly between the first
    and the last task and scaled by the training images per task, training at ``train_images_per_s`` for
    ``epochs`` epochs, evaluation of all seen tasks at ``eval_img_s``."""
    project = project or {}
    n = res["n_tasks"]
    train = project.get("train_images") or res["bench_train_images"]
    test = project.get("test_images") or res["bench_test_images"]
    epochs = project.get("epochs") or 1
    first, last = res["phase_seconds"]["task1"], res["phase_seconds"][f"task{n}"]
    scale = train / res["bench_train_images"]
    total = 0.0
    for t in range(n):
        w = t / (n - 1) if n > 1 else 0.0
        total += scale * sum((1 - w) * first[p] + w * last[p] for p in PHASES)
        total += train * epochs / res["train_images_per_s"] + (t + 1) * test / res["eval_img_s"]
    return total
