"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i][j]`` is the accuracy (%) on task j after training task i, for j <= i (row i has i+1
entries). With T tasks:

* average accuracy after task i:  A_i = mean_j<=i R[i][j]          (final: A_{T-1})
* forgetting = mean_{j<T-1} ( max_{j<=i<T} R[i][j] - R[T-1][j] )
* BWT        = mean_{j<T-1} ( R[T-1][j] - R[j][j] )
* FWT        = mean_{j>=1}  ( P[j-1][j] - B[j] ), where P[j-1][j] is the accuracy on task j
  after training tasks 0..j-1 and B[j] the accuracy of the initial (untrained) model on
  task j, both with the classes of tasks 0..j visible (GEM's definition).
"""
from __future__ import annotations

from typing import Optional, Sequence

Matrix = Sequence[Sequence[float]]


def _check(R: Matrix) -> None:
    for i, row in enumerate(R):
        if len(row) < i + 1:
            raise ValueError(f"row {i} of the accuracy matrix has {len(row)} entries, needs {i + 1}")


def average_accuracy(row: Sequence[float]) -> float:
    """Unweighted mean over tasks of one row (Mammoth's 'mean accuracy')."""
    return float(sum(row) / len(row)) if len(row) else float("nan")


def final_average_accuracy(R: Matrix) -> float:
    _check(R)
    return average_accuracy(R[-1][:len(R)])


def forgetting(R: Matrix) -> Optional[float]:
    """Mean drop from each old task's best accuracy to its final accuracy (None with one task)."""
    _check(R)
    T = len(R)
    if T < 2:
        return None
    drops = [max(R[i][j] for i in range(j, T)) - R[T - 1][j] for j in range(T - 1)]
    return float(sum(drops) / len(drops))


def backward_transfer(R: Matrix) -> Optional[float]:
    """Mean change of each old task's accuracy from just after learning it to the end (None with one task)."""
    _check(R)
    T = len(R)
    if T < 2:
        return None
    return float(sum(R[T - 1][j] - R[j][j] for j in range(T - 1)) / (T - 1))


def forward_transfer(before: Sequence[float], baseline: Sequence[float]) -> Optional[float]:
    """``before[j]`` = accuracy on task j after tasks 0..j-1; ``baseline[j]`` = the untrained model's."""
    pairs = [(before[j], baseline[j]) for j in range(1, min(len(before), len(baseline)))
             if before[j] is not None and baseline[j] is not None]
    if not pairs:
        return None
    return float(sum(b - a for b, a in pairs) / len(pairs))
