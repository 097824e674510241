"""Optional experiment tracking: Weights & Biases and TensorBoard, each only when asked for.

Both receive the same scalars as the results JSON, with Mammoth's W&B key names:

- after task ``t`` (step ``t + 1``): ``RESULT_class_mean_accs`` / ``RESULT_task_mean_accs`` (the JSON's
  ``average_class_il_per_task[t]`` / ``average_task_il_per_task[t]``) and ``RESULT_class_acc_<j>`` /
  ``RESULT_task_acc_<j>`` (row ``t`` of ``accuracy_matrix_class_il`` / ``accuracy_matrix_task_il``);
- at the end: ``final_class_il``, ``final_task_il``, ``forgetting``, ``forgetting_task_il``, ``bwt``,
  ``bwt_task_il``, ``fwt``, ``fwt_task_il`` (when computed) and ``total_seconds``.

The tracking libraries are imported lazily; a missing one is a one-line error before training starts.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import Any, Optional, Sequence

from utils.errors import UserError

SUMMARY_KEYS = ("final_class_il", "final_task_il", "forgetting", "forgetting_task_il", "bwt", "bwt_task_il",
                "fwt", "fwt_task_il")


def task_scalars(matrix_class_il: Sequence[Sequence[float]], matrix_task_il: Sequence[Sequence[float]],
                 task: int) -> dict[str, float]:
    """The scalars logged after ``task`` (0-based) from the accuracy matrices (rows = tasks done)."""
    cil = list(matrix_class_il[task])
    til = list(matrix_task_il[task]) if len(matrix_task_il) > task else []  # none in domain-il/general-continual
    out = {}
    for key, row in (("RESULT_class_mean_accs", cil), ("RESULT_task_mean_accs", til)):
        values = [v for v in row if v is not None]  # None: a task without test images
        if values:
            out[key] = sum(values) / len(values)
    out.update({f"RESULT_class_acc_{j}": float(v) for j, v in enumerate(cil) if v is not None})
    out.update({f"RESULT_task_acc_{j}": float(v) for j, v in enumerate(til) if v is not None})
    return out


def summary_scalars(results: dict[str, Any]) -> dict[str, float]:
    """The final scalars of a results dict (finite numbers only)."""
    out = {k: float(results[k]) for k in SUMMARY_KEYS if isinstance(results.get(k), (int, float))}
    seconds = (results.get("timings") or {}).get("total_seconds")
    if isinstance(seconds, (int, float)):
        out["total_seconds"] = float(seconds)
    return {k: v for k, v in out.items() if math.isfinite(v)}


class ResultLogger:
    """Interface of a tracker: per-task scalars, final scalars, close."""

    def log_task(self, task: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def log_summary(self, summary: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError


class WandbLogger(ResultLogger):
    """A W&B run; per-task scalars with ``step = task + 1``, final scalars in ``run.summary``."""

    def __init__(self, project: str, entity: Optional[str], name: str, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise UserError("--wandb_project needs the wandb package: pip install wandb "
                            "(or drop --wandb_project)") from None
        try:
            self.run = wandb.init(project=project, entity=entity, name=name, config=config)
        except Exception as exc:  # login, network, bad entity: the library's own exception types vary
            raise UserError(f"cannot start the W&B run ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                            f"run `wandb login`, or set WANDB_MODE=offline") from None

    def log_task(self, task: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=task + 1)

    def log_summary(self, summary: dict[str, float]) -> None:
        self.run.summary.update(dict(summary))

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TensorBoardLogger(ResultLogger):
    """Event files under ``log_dir`` (``torch.utils.tensorboard``, needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        try:
            self.writer = SummaryWriter(log_dir=log_dir)
        except OSError as exc:
            raise UserError(f"--tensorboard folder {log_dir} is not writable ({exc.strerror}); "
                            f"pass a writable folder") from None
        self.last_step = 0

    def log_task(self, task: int, metrics: dict[str, float]) -> None:
        self.last_step = task + 1
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=task + 1)
        self.writer.flush()

    def log_summary(self, summary: dict[str, float]) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(key, value, global_step=self.last_step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def open_loggers(args: argparse.Namespace, run_name: str) -> list[ResultLogger]:
    """The trackers asked for on the command line (none by default)."""
    loggers: list[ResultLogger] = []
    try:
        if getattr(args, "wandb_project", None) and not getattr(args, "nowand", False):
            loggers.append(WandbLogger(args.wandb_project, args.wandb_entity, args.wandb_name or run_name,
                                       {k: v for k, v in vars(args).items()}))
        if getattr(args, "tensorboard", None):
            loggers.append(TensorBoardLogger(os.path.join(args.tensorboard, run_name)))
    except BaseException:
        close_loggers(loggers, failed=True)
        raise
    return loggers


def close_loggers(loggers: Sequence[ResultLogger], failed: bool = False) -> None:
    """Close every tracker (all of them, even if one fails to close)."""
    errors = []
    for logger in loggers:
        try:
            logger.close(failed=failed)
        except Exception as exc:  # a tracker that cannot flush must not hide the run's own outcome
            errors.append(exc)
    if errors and not failed:
        raise UserError(f"closing a tracker failed: {type(errors[0]).__name__}: {errors[0]}")
