"""The training loop: task by task, the model's hooks in a fixed order, evaluation after each task."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from tqdm import tqdm

from utils import distributed, metrics
from utils.errors import UserError
from utils.evaluate import evaluate, reports_task_il
from utils.fitting import TaskFitting
from utils.killpoints import kill_point
from utils.loss_monitor import LossMonitor
from utils.protocols import LoopDataset, LoopModel, LoopSettings
from utils.stopping import check_stop


@dataclass
class RunRecord:
    """Everything measured so far; rows are appended after each task (resumable)."""

    accuracy_matrix_class_il: list[list[float]] = field(default_factory=list)
    accuracy_matrix_task_il: list[list[float]] = field(default_factory=list)
    # forward transfer (only with --enable_other_metrics): accuracy on task j before training it,
    # and the untrained model's accuracy on task j, both with the classes of tasks 0..j visible
    before_task_class_il: list[Optional[float]] = field(default_factory=list)
    before_task_task_il: list[Optional[float]] = field(default_factory=list)
    untrained_class_il: list[float] = field(default_factory=list)
    untrained_task_il: list[float] = field(default_factory=list)
    task_timings: list[dict[str, float]] = field(default_factory=list)
    # --eval_epochs: {"task", "epoch", "class_il", "task_il"} per evaluation within a task
    epoch_evaluations: list[dict[str, Any]] = field(default_factory=list)
    # --eval_future: after task i, accuracy on the future tasks i+1.. (class-IL over all classes)
    future_accuracy_class_il: list[list[float]] = field(default_factory=list)
    start_from: int = 0  # --start_from: tasks before it were not trained in this run

    @property
    def tasks_done(self) -> int:
        return len(self.accuracy_matrix_class_il)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """Final metrics (see :mod:`utils.metrics` for the definitions)."""
        R, Rt = self.accuracy_matrix_class_il, self.accuracy_matrix_task_il
        out: dict[str, Any] = {
            "final_class_il": metrics.final_average_accuracy(R) if R else None,
            "final_task_il": metrics.final_average_accuracy(Rt) if Rt else None,
            "average_class_il_per_task": [metrics.average_accuracy(r) for r in R],
            "average_task_il_per_task": [metrics.average_accuracy(r) for r in Rt],
            "forgetting": metrics.forgetting(R) if R else None,
            "forgetting_task_il": metrics.forgetting(Rt) if Rt else None,
            "bwt": metrics.backward_transfer(R) if R else None,
            "bwt_task_il": metrics.backward_transfer(Rt) if Rt else None,
        }
        if self.untrained_class_il:
            out["fwt"] = metrics.forward_transfer(self.before_task_class_il, self.untrained_class_il)
            out["fwt_task_il"] = metrics.forward_transfer(self.before_task_task_il, self.untrained_task_il) \
                if self.untrained_task_il else None
        return out


def _fmt(values: list[float]) -> str:
    return " ".join(metrics.percent(v, 6) for v in values)


def print_task_table(record: RunRecord, out=None) -> None:
    """The accuracy matrix so far, one row per trained task, plus the averages (to ``out``, default stdout)."""
    out = out if out is not None else sys.stdout  # looked up per call: a redirected stdout may be closed later
    R, Rt = record.accuracy_matrix_class_il, record.accuracy_matrix_task_il
    t = len(R) - 1
    print(f"\nAccuracy after task {t + 1} (class-IL, % per task):", file=out)
    for i, row in enumerate(R):
        print(f"  after task {i + 1:2d}: {_fmt(row)}   | mean {metrics.percent(metrics.average_accuracy(row), 6)}",
              file=out)
    task_il = metrics.percent(metrics.average_accuracy(Rt[-1])) if Rt else "not reported (every task has all classes)"
    print(f"  mean class-IL {metrics.percent(metrics.average_accuracy(R[-1]))}   mean task-IL {task_il}", file=out,
          flush=True)


def _untrained_accuracy(model: Any, dataset: Any) -> tuple[list[float], list[float]]:
    cil, til = [], []
    for j in range(dataset.n_tasks):
        a, b = evaluate(model, dataset, tasks=[j], n_visible=dataset.get_offsets(j)[1])
        cil.append(a[0])
        til.extend(b[:1])  # empty where task-IL is not reported (domain-il, general-continual)
    return cil, til


def run_epochs(model: LoopModel, dataset: LoopDataset, args: LoopSettings, train_loader: Any, task: int) -> None:
    """The standard epochs of one task (``ContinualModel.train_task``'s default): per epoch
    ``meta_begin_epoch`` -> ``meta_observe`` on every batch of ``train_loader`` -> ``meta_end_epoch``.

    How many epochs/steps and the learning-rate schedule follow :mod:`utils.fitting`. With
    ``--eval_epochs`` the evaluations are appended to ``model.epoch_evaluations`` (set by :func:`train`).
    """
    quiet = bool(args.non_verbose) or not distributed.is_main_process()
    fitting = TaskFitting(model, dataset, args, len(train_loader))
    attached = getattr(getattr(train_loader, "dataset", None), "extra_return_fields", ())  # by a Mammoth model
    extra_names = tuple(getattr(dataset, "extra_return_fields", ())) + tuple(attached)
    for epoch in tqdm(fitting.epochs(), desc=f"task {task + 1} epochs", leave=False, disable=quiet):
        model.meta_begin_epoch(epoch, dataset)
        bar = tqdm(train_loader, desc=f"task {task + 1} epoch {epoch + 1}", leave=False, disable=quiet)
        monitor = LossMonitor(task, epoch)
        distributed_run = distributed.world_size() > 1
        for step, (inputs, labels, not_aug_inputs, *extra) in enumerate(bar):
            inputs = inputs.to(model.device, non_blocking=True)
            labels = labels.to(model.device, non_blocking=True).long()
            not_aug_inputs = not_aug_inputs.to(model.device, non_blocking=True)
            fields = {name: value.to(model.device, non_blocking=True) for name, value in zip(extra_names, extra)}
            loss = model.meta_observe(inputs, labels, not_aug_inputs, epoch=epoch, **fields)
            kill_point("train", task + 1, epoch + 1, step + 1)
            monitor.update(loss, step)  # device-side NaN check; read on logging steps only (one host sync)
            logging_step = step % model.LOG_EVERY == 0
            if logging_step:
                bar.set_postfix(loss=f"{monitor.read():.3f}", refresh=False)
            if logging_step or not distributed_run:
                check_stop()  # SIGTERM: a safe point (under DDP the ranks agree by a collective: logging steps only)
            fitting.after_step()
            if fitting.step_budget_reached():
                break
        monitor.read()
        model.meta_end_epoch(epoch, dataset)
        fitting.after_epoch(epoch)
        if args.eval_epochs and (epoch + 1) % args.eval_epochs == 0 and hasattr(model, "epoch_evaluations"):
            cil, til = evaluate(model, dataset)
            model.epoch_evaluations.append({"task": task, "epoch": epoch, "class_il": cil, "task_il": til})
            if distributed.is_main_process():
                print(f"task {task + 1} epoch {epoch + 1}: class-IL {metrics.percent(metrics.average_accuracy(cil))} "
                      f"task-IL {metrics.percent(metrics.average_accuracy(til))}", flush=True)


def future_accuracy(model: Any, dataset: Any) -> list[float]:
    """``--eval_future``: class-IL accuracy (all classes visible) of ``model.future_forward`` on the future tasks."""
    future = list(range(dataset.c_task + 1, dataset.n_tasks))
    if not future:
        return []

    class Future:  # evaluate() calls the model; route it to future_forward
        def __init__(self, inner: Any):
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __call__(self, x: Any) -> Any:
            return self.inner.future_forward(x)

    return evaluate(Future(model), dataset, tasks=future, n_visible=dataset.n_classes)[0]


def skip_tasks(model: Any, dataset: Any, args: Any, record: RunRecord, until: int) -> None:
    """``--start_from``: tasks ``record.tasks_done .. until-1`` run begin_task/end_task without training,
    then are evaluated (so the accuracy matrix keeps one row per task)."""
    if until > dataset.n_tasks:
        raise UserError(f"--start_from {until} exceeds the {dataset.n_tasks} tasks of {dataset.NAME}")
    if until < record.tasks_done:
        raise UserError(f"--start_from {until} is before the {record.tasks_done} task(s) the checkpoint already "
                        f"finished; omit it to continue after them")
    record.start_from = until
    for _ in range(record.tasks_done, until):
        if args.enable_other_metrics:  # no forward-transfer measurement for untrained tasks
            record.before_task_class_il.append(None)
            record.before_task_task_il.append(None)
        dataset.get_data_loaders()
        model.meta_begin_task(dataset)
        model.meta_end_task(dataset)
        accs = evaluate(model, dataset)
        model.meta_end_eval(dataset, accs)
        record.accuracy_matrix_class_il.append(accs[0])
        record.accuracy_matrix_task_il.append(accs[1])
        record.task_timings.append({"train_seconds": 0.0, "eval_seconds": 0.0})


def train(model: LoopModel, dataset: LoopDataset, args: LoopSettings, record: Optional[RunRecord] = None,
          on_task_end: Optional[Callable[[RunRecord], None]] = None) -> RunRecord:
    """Train tasks ``record.tasks_done .. N_TASKS-1`` (or up to ``--stop_after``) and evaluate after each.

    Order per task: ``get_data_loaders`` -> ``meta_begin_task`` -> ``model.train_task`` (by default
    epochs of ``meta_observe``) -> ``meta_end_task`` -> ``evaluate`` (all seen tasks) -> ``meta_end_eval`` -> ``on_task_end``.
    """
    record = record or RunRecord()
    if args.eval_future and not callable(getattr(model, "future_forward", None)):
        raise UserError(f"--eval_future needs a model with future_forward (Mammoth's FutureModel, e.g. a zero-shot "
                        f"model); {args.model} has none")
    n_tasks = dataset.n_tasks
    last = min(n_tasks, args.stop_after) if args.stop_after else n_tasks
    if args.enable_other_metrics and not record.untrained_class_il:
        record.untrained_class_il, record.untrained_task_il = _untrained_accuracy(model, dataset)
    if args.start_from is not None:
        skip_tasks(model, dataset, args, record, args.start_from)
    quiet = bool(args.non_verbose) or not distributed.is_main_process()
    for task in tqdm(range(record.tasks_done, last), desc="tasks", disable=quiet):
        start = time.perf_counter()
        train_loader, _ = dataset.get_data_loaders()
        if args.enable_other_metrics:
            before = (None, None)
            if task > 0:
                a, b = evaluate(model, dataset, tasks=[task], n_visible=dataset.get_offsets(task)[1])
                before = (a[0], b[0] if b else None)
            record.before_task_class_il.append(before[0])
            if reports_task_il(dataset):
                record.before_task_task_il.append(before[1])
        model.net.train()
        model.meta_begin_task(dataset)
        distributed.average_gradients_before_step(model.opt)  # a no-op in a single process
        kill_point("begin_task", task + 1)
        if not args.inference_only:
            model.epoch_evaluations = []
            model.train_task(dataset, train_loader, task)
            record.epoch_evaluations.extend(model.epoch_evaluations)
        model.meta_end_task(dataset)
        train_seconds = time.perf_counter() - start
        start = time.perf_counter()
        accs = evaluate(model, dataset)
        eval_seconds = time.perf_counter() - start
        model.meta_end_eval(dataset, accs)
        record.accuracy_matrix_class_il.append(accs[0])
        if reports_task_il(dataset):
            record.accuracy_matrix_task_il.append(accs[1])
        record.task_timings.append({"train_seconds": train_seconds, "eval_seconds": eval_seconds})
        if args.eval_future:
            record.future_accuracy_class_il.append(future_accuracy(model, dataset))
        if distributed.is_main_process():
            print_task_table(record)
        if on_task_end is not None:
            on_task_end(record)
        if task + 1 < last:
            check_stop()  # SIGTERM: stop after a finished task (its checkpoint is complete)
    return record
