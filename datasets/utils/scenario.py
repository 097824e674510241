"""Explicit class-incremental scenario: the class order and how many classes each task has."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class ClassIncrementalScenario:
    """Tasks are contiguous ranges of (possibly re-ordered) global labels.

    ``class_order`` follows Mammoth's convention: a sample with original label ``y`` gets
    the new label ``class_order[y]``; task ``t`` then holds new labels ``offsets(t)``.
    """

    classes_per_task: tuple[int, ...]
    class_order: Optional[tuple[int, ...]] = None

    @classmethod
    def build(cls, classes_per_task: int | Sequence[int], n_tasks: int, permute: bool = False,
              seed: Optional[int] = None) -> "ClassIncrementalScenario":
        """Scenario from Mammoth's ``N_CLASSES_PER_TASK`` (int or list) and ``N_TASKS``."""
        per_task = tuple([int(classes_per_task)] * n_tasks) if isinstance(classes_per_task, (int, np.integer)) \
            else tuple(int(c) for c in classes_per_task)
        if len(per_task) != n_tasks:
            raise ValueError(f"{len(per_task)} class counts given for {n_tasks} tasks")
        if any(c < 1 for c in per_task):
            raise ValueError(f"every task needs at least one class, got {list(per_task)}")
        order = None
        if permute:
            order = tuple(int(i) for i in np.random.RandomState(seed).permutation(sum(per_task)))
        return cls(per_task, order)

    @property
    def n_tasks(self) -> int:
        return len(self.classes_per_task)

    @property
    def n_classes(self) -> int:
        return sum(self.classes_per_task)

    def offsets(self, task: int) -> tuple[int, int]:
        """``(start, end)`` label range of ``task``."""
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} out of range [0, {self.n_tasks})")
        start = sum(self.classes_per_task[:task])
        return start, start + self.classes_per_task[task]

    def task_of_label(self, label: int) -> int:
        """The task that holds (new) label ``label``."""
        return int(np.searchsorted(np.cumsum(self.classes_per_task), label, side="right"))

    def relabel(self, labels: np.ndarray) -> np.ndarray:
        """Original labels -> scenario labels (identity without a class order)."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.class_order is None:
            return labels
        return np.asarray(self.class_order, dtype=np.int64)[labels]

    def original_labels(self, labels: np.ndarray) -> np.ndarray:
        """Scenario labels -> original labels (inverse of :meth:`relabel`)."""
        labels = np.asarray(labels, dtype=np.int64)
        if self.class_order is None:
            return labels
        return np.argsort(np.asarray(self.class_order, dtype=np.int64))[labels]

    def reorder(self, class_sequence: Optional[Sequence[int]] = None,
                task_order: Optional[Sequence[int]] = None) -> "ClassIncrementalScenario":
        """Mammoth's ``--custom_class_order`` / ``--custom_task_order``.

        ``class_sequence`` lists the original class ids in training order (the first task learns
        the first ones); ``task_order`` lists the tasks of the resulting split in training order.
        """
        n = self.n_classes
        order = np.asarray(self.class_order if self.class_order is not None else range(n), dtype=np.int64)
        per_task = list(self.classes_per_task)
        if class_sequence is not None:
            seq = [int(c) for c in class_sequence]
            if sorted(seq) != list(range(n)):
                raise ValueError(f"--custom_class_order must list each of the {n} class ids 0..{n - 1} once")
            position = np.empty(n, dtype=np.int64)
            position[np.asarray(seq)] = np.arange(n)
            order = position  # new label of original class c = its position in the sequence
        if task_order is not None:
            tasks = [int(t) for t in task_order]
            if sorted(tasks) != list(range(self.n_tasks)):
                raise ValueError(f"--custom_task_order must list each of the {self.n_tasks} task ids "
                                 f"0..{self.n_tasks - 1} once")
            remap = np.empty(n, dtype=np.int64)
            new_start = 0
            for t in tasks:
                start, end = self.offsets(t)
                remap[start:end] = np.arange(new_start, new_start + end - start)
                new_start += end - start
            order = remap[order]
            per_task = [self.classes_per_task[t] for t in tasks]
        identity = bool((order == np.arange(n)).all())
        return ClassIncrementalScenario(tuple(per_task), None if identity else tuple(int(i) for i in order))

@dataclass(frozen=True)
class SharedLabelScenario:
    """Domain-IL and general-continual: every task holds the same ``n_classes`` labels (Mammoth's offsets are
    ``(0, N_CLASSES_PER_TASK)`` for every task); what changes between tasks is the input distribution."""

    n_tasks: int
    n_classes: int
    class_order: Optional[tuple[int, ...]] = None

    @classmethod
    def build(cls, n_classes: int, n_tasks: int, permute: bool = False,
              seed: Optional[int] = None) -> "SharedLabelScenario":
        order = tuple(int(i) for i in np.random.RandomState(seed).permutation(n_classes)) if permute else None
        return cls(int(n_tasks), int(n_classes), order)

    @property
    def classes_per_task(self) -> tuple[int, ...]:
        return (self.n_classes,) * self.n_tasks

    def offsets(self, task: int) -> tuple[int, int]:
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} out of range [0, {self.n_tasks})")
        return 0, self.n_classes

    def task_of_label(self, label: int) -> int:
        return 0

    def relabel(self, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        return labels if self.class_order is None else np.asarray(self.class_order, dtype=np.int64)[labels]
