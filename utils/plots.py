"""PNG figures of continual-learning results (matplotlib, Agg backend, atomic writes).

Every function selects the non-interactive Agg backend itself (no import-time side effects),
writes one PNG atomically and returns its path:

- :func:`plot_accuracy_matrix`: heat map of an accuracy matrix (row = after task i, column = task j);
- :func:`plot_average_accuracy`: average accuracy after each task, one line per series;
- :func:`plot_task_comparison`: several methods task by task (one panel per dataset);
- :func:`plot_edit_table`: target/control accuracies of a module-editing run (``app/edit.py``).
"""
from __future__ import annotations

import io
import math
from typing import Any, Mapping, Optional, Sequence

from utils.io import atomic_write


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    data = buffer.getvalue()
    atomic_write(path, lambda fh: fh.write(data), binary=True)
    return path


def _gaps(values: Sequence[Optional[float]]) -> list[float]:
    """Values to plot: a missing one (None) becomes a gap in the line, never a number."""
    return [float("nan") if v is None else float(v) for v in values]


def square_matrix(rows: Sequence[Sequence[Optional[float]]]) -> list[list[float]]:
    """A ragged lower-triangular matrix padded to ``len(rows)`` x ``max row length``; padding and missing
    values (None: a task without test images) are NaN, drawn as empty cells without a number."""
    width = max((len(r) for r in rows), default=0)
    return [_gaps(r) + [float("nan")] * (width - len(r)) for r in rows]


def plot_accuracy_matrix(matrix: Sequence[Sequence[Optional[float]]], path: str,
                         title: str = "Class-IL accuracy (%)") -> str:
    """Heat map of ``matrix[i][j]`` = accuracy on task j after training task i (cells annotated)."""
    plt = _pyplot()
    grid = square_matrix(matrix)
    n_rows, n_cols = len(grid), len(grid[0]) if grid else 0
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * max(n_cols, 2), 1.0 + 0.45 * max(n_rows, 2)))
    image = ax.imshow(grid, vmin=0.0, vmax=100.0, cmap="viridis", aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value) and n_cols <= 20:
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 60 else "black")
    ax.set_xticks(range(n_cols), [str(j + 1) for j in range(n_cols)])
    ax.set_yticks(range(n_rows), [str(i + 1) for i in range(n_rows)])
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_average_accuracy(series: Mapping[str, Sequence[Optional[float]]], path: str,
                          title: str = "Average accuracy after each task", ylabel: str = "accuracy (%)") -> str:
    """One line per entry of ``series`` (e.g. ``{"class-IL": [...], "task-IL": [...]}``), x = task 1..T."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    for label, values in series.items():
        ys = _gaps(values)
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=label)
    longest = max((len(v) for v in series.values()), default=1)
    ax.set_xticks(range(1, longest + 1))
    ax.set_xlabel("after task")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if series:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_task_comparison(panels: Mapping[str, Mapping[str, Sequence[Optional[float]]]], path: str,
                         stds: Optional[Mapping[str, Mapping[str, Sequence[Optional[float]]]]] = None,
                         ylabel: str = "average class-IL accuracy (%)") -> str:
    """Methods compared task by task: ``panels[dataset][method]`` = mean accuracy after each task.

    ``stds`` (same layout) draws a shaded band of ±1 standard deviation. A missing value (None) is a gap.
    """
    plt = _pyplot()
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(5.0 * n, 3.4), squeeze=False)
    for ax, (dataset, methods) in zip(axes[0], panels.items()):
        for method, values in methods.items():
            means = _gaps(values)
            xs = list(range(1, len(means) + 1))
            ax.plot(xs, means, marker="o", label=method)
            band = (stds or {}).get(dataset, {}).get(method)
            if band is not None:
                spread = _gaps(band)
                ax.fill_between(xs, [m - s for m, s in zip(means, spread)], [m + s for m, s in zip(means, spread)],
                                alpha=0.2)
        ax.set_title(dataset)
        ax.set_xlabel("after task")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_edit_table(rows: Sequence[Mapping[str, Any]], path: str, title: str = "Module editing") -> str:
    """Grouped bars of a module-editing table.

    Each row is one edit (or one evaluation point) with a ``"name"`` (x label) and numeric
    columns, e.g. ``{"name": "forget class 3", "target_before": 91.0, "target_after": 4.0,
    "control_before": 88.0, "control_after": 86.5}``. Every numeric key becomes a bar series;
    non-numeric keys other than ``name`` are ignored.
    """
    if not rows:
        raise ValueError("plot_edit_table needs at least one row")
    plt = _pyplot()
    columns: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key != "name" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and key not in columns:
                columns.append(key)
    if not columns:
        raise ValueError("plot_edit_table: the rows have no numeric columns")
    names = [str(row.get("name", i + 1)) for i, row in enumerate(rows)]
    width = 0.8 / len(columns)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(rows) * max(1, len(columns) / 2)), 3.4))
    for k, column in enumerate(columns):
        values = [float(row.get(column, float("nan"))) for row in rows]
        ax.bar([i - 0.4 + width * (k + 0.5) for i in range(len(rows))], values, width=width, label=column)
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
