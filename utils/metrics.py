"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy (%) on task j after training task i, for j <= i (row i has i+1
entries). With T tasks:

* average accuracy after task i:  A_i = mean_j<=i R[i][j]          (final: A_{T-1})
* forgetting = mean_{j<T-1} ( max_{j<=i<T} R[i][j] - R[T-1][j] )
* BWT        = mean_{j<T-1} ( R[T-1][j] - R[j][j] )
* FWT        = mean_{j>=1}  ( P[j-1][j] - B[j] ), where P[j-1][j] is the accuracy on task j
  after training tasks 0..j-1 and B[j] the accuracy of the initial (untrained) model on
  task j, both with the classes of tasks 0..j visible (GEM's definition).

An entry is ``None`` where a task has no test images (accepted with ``--allow_incomplete_test_set 1``):
every metric is then taken over the entries that exist, and is ``None`` (never NaN) when none does.
"""
from __future__ import annotations

from typing import Optional, Sequence

Matrix = Sequence[Sequence[Optional[float]]]


def _check(R: Matrix) -> None:
    for i, row in enumerate(R):
        if len(row) < i + 1:
            raise ValueError(f"row {i} of the accuracy matrix has {len(row)} entries, needs {i + 1}")


def average_accuracy(row: Sequence[Optional[float]]) -> Optional[float]:
    """Unweighted mean over the tasks of one row that have a value (Mammoth's 'mean accuracy'); None if none has."""
    values = [v for v in row if v is not None]
    return float(sum(values) / len(values)) if values else None


def final_average_accuracy(R: Matrix) -> Optional[float]:
    _check(R)
    return average_accuracy(R[-1][:len(R)])


def forgetting(R: Matrix) -> Optional[float]:
    """Mean drop from each old task's best accuracy to its final accuracy (None with one task)."""
    _check(R)
    T = len(R)
    drops = []
    for j in range(T - 1):
        seen = [R[i][j] for i in range(j, T) if R[i][j] is not None]
        if seen and R[T - 1][j] is not None:
            drops.append(max(seen) - R[T - 1][j])
    return float(sum(drops) / len(drops)) if drops else None


def backward_transfer(R: Matrix) -> Optional[float]:
    """Mean change of each old task's accuracy from just after learning it to the end (None with one task)."""
    _check(R)
    T = len(R)
    changes = [R[T - 1][j] - R[j][j] for j in range(T - 1) if R[T - 1][j] is not None and R[j][j] is not None]
    return float(sum(changes) / len(changes)) if changes else None


def percent(value: Optional[float], width: int = 0) -> str:
    """An accuracy for printing: ``12.34``, or ``n/a`` for a task without test images."""
    return f"{value:{width}.2f}" if value is not None else "n/a".rjust(width)


def forward_transfer(before: Sequence[float], baseline: Sequence[float]) -> Optional[float]:
    """``before[j]`` = accuracy on task j after tasks 0..j-1; ``baseline[j]`` = the untrained model's."""
    pairs = [(before[j], baseline[j]) for j in range(1, min(len(before), len(baseline)))
             if before[j] is not None and baseline[j] is not None]
    if not pairs:
        return None
    return float(sum(b - a for b, a in pairs) / len(pairs))
