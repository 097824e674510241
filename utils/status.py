"""Mammoth's import path ``utils.status``: ``progress_bar``, one line per call on stderr."""
from __future__ import annotations

import sys
from typing import Union


def progress_bar(i: int, max_iter: int, epoch: Union[int, str], task_number: int, loss: float) -> None:
    """Print ``[task t] epoch e: i/max_iter | loss`` on stderr, overwriting the previous line."""
    end = "\n" if i + 1 >= max_iter else ""
    task = task_number + 1 if isinstance(task_number, int) else task_number
    print(f"\r[task {task}] epoch {epoch}: {i + 1}/{max_iter} | loss {float(loss):.4f}", end=end,
          file=sys.stderr, flush=True)
