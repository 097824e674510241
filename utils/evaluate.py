"""Evaluation: per-task class-IL and task-IL accuracy."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from utils import distributed
from utils.errors import UserError
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
                       n_visible: int, task: Optional[int] = None) -> tuple[Optional[float], Optional[float]]:
    """(class-IL, task-IL) accuracy in % on one task's loader; (None, None) for a loader without images
    (a task without test images, accepted with ``--allow_incomplete_test_set 1``).

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
        return None, None
    return 100.0 * correct_cil / total, 100.0 * correct_til / total


def reports_task_il(dataset: Any) -> bool:
    """Whether task-IL accuracy means something for ``dataset`` (its tasks have disjoint label ranges)."""
    return getattr(dataset, "SETTING", "class-il") in TASK_IL_SETTINGS


def evaluate(model: Any, dataset: Any, tasks: Optional[Iterable[int]] = None,
             n_visible: Optional[int] = None) -> tuple[list[Optional[float]], list[Optional[float]]]:
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
    cil: list[Optional[float]] = []
    til: list[Optional[float]] = []
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


def _original(dataset: Any, labels: list[int]) -> list[int]:
    """Scenario labels -> the data's own class ids (they differ under a class order)."""
    to_original = getattr(dataset.scenario, "original_labels", None)
    return [int(v) for v in to_original(np.asarray(labels, dtype=np.int64))] if to_original and labels else labels


def _class_names(dataset: Any, labels: list[int]) -> str:
    """``3 ('truck')``, ... for scenario labels: the user's class ids (and names, when the dataset has them)."""
    original = _original(dataset, labels)
    names = dataset.class_names
    shown = [f"{o} ({names[o]!r})" if names is not None and o < len(names) else str(o) for o in original[:6]]
    return ", ".join(shown) + (f" and {len(labels) - 6} more" if len(labels) > 6 else "")


def check_test_coverage(dataset: Any, accept: bool) -> dict[str, Any]:
    """Every class of every task must have test images (``--validation``: held-out images); else a one-line
    :class:`UserError` naming the classes or tasks without, unless ``accept`` (``--allow_incomplete_test_set 1``):
    accuracy is then measured over the classes that have test images, and a task without any is ``None``
    in the accuracy matrices. An empty test set, or a task without test images under early stopping, is an
    error either way. Returns the ``test_set`` entry of the results JSON."""
    train, test = dataset.splits
    args = dataset.args
    present = set(np.unique(test.targets).tolist())
    missing_classes: list[int] = []
    empty_tasks: list[int] = []
    for task in range(dataset.n_tasks):
        start, end = dataset.get_offsets(task)
        trained = set(np.unique(train.targets[dataset.task_indices(train, task)]).tolist())
        lacking = [c for c in range(start, end) if c not in present and (c in trained or not trained)]
        missing_classes.extend(c for c in lacking if c not in missing_classes)
        if len(dataset.task_indices(test, task)) == 0:
            empty_tasks.append(task)
    coverage = {"complete": not missing_classes and not empty_tasks,
                "classes_without_test_images": _original(dataset, missing_classes),
                "tasks_without_test_images": [t + 1 for t in empty_tasks],
                "accuracy_over": "all classes" if not missing_classes else "the classes that have test images"}
    if coverage["complete"]:
        return coverage
    held_out = bool(getattr(args, "validation", None))
    split = f"--validation {args.validation:g} holds out" if held_out else "the test set has"
    several = len(empty_tasks) > 1 if empty_tasks else len(missing_classes) > 1
    them = "them" if several else "it"
    fix = f"raise --validation or add training images of {them}" if held_out else f"add test images for {them}"
    if len(test) == 0:
        raise UserError(f"{dataset.NAME}: {split} no images at all, nothing to evaluate; "
                        f"{'raise --validation' if held_out else 'add test images'}")
    if empty_tasks and getattr(args, "fitting_mode", None) == "early_stopping":
        raise UserError(f"{dataset.NAME}: {split} no images of task {empty_tasks[0] + 1}, which early stopping "
                        f"watches; {fix}")
    if accept:
        return coverage
    if empty_tasks:
        tasks = ", ".join(str(t + 1) for t in empty_tasks[:6]) + (", ..." if len(empty_tasks) > 6 else "")
        what = f"no images of task{'s' if len(empty_tasks) > 1 else ''} {tasks} of {dataset.n_tasks}"
        if len(missing_classes) > sum(dataset.get_offsets(t)[1] - dataset.get_offsets(t)[0] for t in empty_tasks):
            what += f" (classes without images: {_class_names(dataset, missing_classes)})"
    else:
        what = f"no images of class{'es' if len(missing_classes) > 1 else ''} {_class_names(dataset, missing_classes)}"
    raise UserError(f"{dataset.NAME}: {split} {what}; {fix}, or pass --allow_incomplete_test_set 1 to report "
                    f"accuracy over the classes that have test images")
