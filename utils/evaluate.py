"""Evaluation: per-task class-IL and task-IL accuracy."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch.utils.data import DataLoader

from utils import distributed
from utils.killpoints import kill_point
from utils.modes import eval_mode

TASK_IL_SETTINGS = ("class-il", "task-il")


def task_il_only(model: Any) -> bool:
    """A model that only supports task-IL (e.g. one network per task): it is given the task at evaluation,
    ``model(x, task)``, and its class-IL accuracy is reported as 0 (as in Mammoth)."""
    compatibility = getattr(model, "COMPATIBILITY", ())
    return "task-il" in compatibility and "class-il" not in compatibility and "general-continual" not in compatibility


@torch.no_grad()
def accuracy_on_loader(model: Any, loader: DataLoader, task_range: tuple[int, int],
                       n_visible: int, task: Optional[int] = None) -> tuple[float, float]:
    """(class-IL, task-IL) accuracy in % on one task's loader.

    Class-IL: argmax over the logits of the ``n_visible`` classes seen so far. Task-IL: argmax
    over the logits of the task's own range ``task_range = (start, end)``. With ``task``, the model is
    called as ``model(inputs, task)`` (a task-IL-only model).
    """
    start, end = task_range
    correct_cil = correct_til = total = 0
    for batch in loader:
        inputs, labels = batch[0].to(model.device, non_blocking=True), batch[1].to(model.device)
        with model.autocast():
            logits = model(inputs) if task is None else model(inputs, task)
        logits = logits[:, :n_visible].float()
        correct_cil += (logits.argmax(dim=1) == labels).sum().item()
        masked = torch.full_like(logits, float("-inf"))
        masked[:, start:end] = logits[:, start:end]
        correct_til += (masked.argmax(dim=1) == labels).sum().item()
        total += labels.numel()
    if distributed.is_distributed():  # each rank saw a disjoint shard: sum the counts
        counts = distributed.all_reduce_sum(torch.tensor([correct_cil, correct_til, total], dtype=torch.float64,
                                                         device=model.device))
        correct_cil, correct_til, total = (float(v) for v in counts.tolist())
    if total == 0:
        return float("nan"), float("nan")
    return 100.0 * correct_cil / total, 100.0 * correct_til / total


def reports_task_il(dataset: Any) -> bool:
    """Whether task-IL accuracy means something for ``dataset`` (its tasks have disjoint label ranges)."""
    return getattr(dataset, "SETTING", "class-il") in TASK_IL_SETTINGS


def evaluate(model: Any, dataset: Any, tasks: Optional[Iterable[int]] = None,
             n_visible: Optional[int] = None) -> tuple[list[float], list[float]]:
    """Accuracy on each task's test set, as two lists in %: (class-IL, task-IL).

    Task-IL is reported only where tasks hold different classes (``class-il``/``task-il`` settings). In the
    ``domain-il`` and ``general-continual`` settings every task has all the classes, so the task identity
    selects nothing: the second list is empty (Mammoth prints a single "Domain-IL" accuracy there).

    By default: the test loaders built so far, with the classes of all seen tasks visible.
    ``tasks``/``n_visible`` evaluate other tasks (e.g. future ones for forward transfer).
    """
    if tasks is None:
        loaders = list(enumerate(dataset.test_loaders))
        n_visible = dataset.get_offsets(len(dataset.test_loaders) - 1)[1] if n_visible is None else n_visible
    else:
        loaders = [(t, dataset.make_loader(dataset.test_dataset(t), shuffle=False)) for t in tasks]
    cil, til = [], []
    with eval_mode(model):
        for task, loader in loaders:
            given_task = task if task_il_only(model) else None
            a, b = accuracy_on_loader(model, loader, dataset.get_offsets(task),
                                      n_visible if n_visible is not None else dataset.get_offsets(task)[1], given_task)
            a = 0.0 if given_task is not None else a
            cil.append(a)
            if reports_task_il(dataset):
                til.append(b)
            if tasks is None and len(cil) == 1:
                kill_point("eval", len(loaders))  # test hook: mid-evaluation after task len(loaders)
    return cil, til
