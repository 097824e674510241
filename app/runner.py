"""One run from the command line: configuration -> dataset -> backbone -> model -> loop -> results."""
from __future__ import annotations

import argparse
import os
import platform
import resource
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Optional

import torch

from app.config import ROOT, parse_args
from app.experiment import (Experiment, build_experiment, check_compatibility,  # noqa: F401 (re-exported)
                            check_every_task_has_data, get_device, set_random_seed)
from app.remote import resolve_checkpoint
from utils import accelerator, checkpoints, distributed, malloc_policy
from utils.errors import UserError, one_line
from utils.io import check_writable, remove_stale_temporaries, write_json
from utils.evaluate import TASK_IL_SETTINGS
from utils.loggers import close_loggers, open_loggers, summary_scalars, task_scalars
from utils.metrics import percent
from utils.resources import is_out_of_memory, out_of_memory_message
from utils.stopping import EXIT_CODES, sigterm_stops_at_safe_points
from utils.training import RunRecord, train


def versions() -> dict[str, Optional[str]]:
    import timm
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "git_commit": commit}


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"cpu_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    peak = accelerator.peak_memory_mib(device)
    if peak is not None:
        out[device.type] = peak
    return out


def default_results_file(args: argparse.Namespace, setting: str) -> str:
    return os.path.join(args.base_path, args.results_path, setting, args.dataset, args.model,
                        f"{checkpoints.run_name(args)}.json")


def _find_resume_state(args: argparse.Namespace) -> Optional[tuple[str, dict[str, Any]]]:
    """The checkpoint to continue from (``--loadcheck``, or the newest good one of this run with ``--resume``)."""
    if args.loadcheck:
        state = checkpoints.load_run_checkpoint(args.loadcheck)
        checkpoints.check_checkpoint_matches(args.loadcheck, state["args"], args, strict=False)
        return args.loadcheck, state
    if args.resume:
        folder = checkpoints.run_dir(args)
        removed = remove_stale_temporaries(folder) if distributed.is_main_process() else []
        if removed:
            print(f"removed {len(removed)} unfinished checkpoint file(s) of an interrupted run in {folder}",
                  file=sys.stderr)
        found = checkpoints.latest_checkpoint(folder)
        if found is None:
            print(f"no checkpoint in {folder}: starting from the first task", file=sys.stderr)
            return None
        checkpoints.check_stored_args(found[0], found[1].get("args"))
        checkpoints.check_checkpoint_matches(found[0], found[1]["args"], args, strict=True)
        return found
    return None


def _restore(model: Any, dataset: Any, path: str, state: dict[str, Any], device: torch.device) -> RunRecord:
    """Load a checkpoint into ``model``/``dataset``/the RNGs; return the record of the finished tasks."""
    try:
        record = RunRecord.from_dict(state["record"])
        if record.tasks_done > dataset.n_tasks:
            raise ValueError(f"it has {record.tasks_done} finished tasks, the dataset only {dataset.n_tasks}")
        for _ in range(record.tasks_done):  # rebuild the test loaders of the finished tasks
            dataset.get_data_loaders()
        model.load_lean_checkpoint_state(state["model_state"], dataset, path)
        checkpoints.set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # e.g. tensor shapes of another backbone
        raise UserError(f"checkpoint {path} does not fit this model/backbone/dataset "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                        f"use the arguments it was made with") from None
    model.to(device)
    print(f"resumed from {path}: {record.tasks_done} of {dataset.n_tasks} tasks done", file=sys.stderr)
    return record


def save_paused(args: argparse.Namespace, model: Any, record: RunRecord) -> str:
    """``--save_after_interrupt``: the model as it is now, with the finished tasks' record (Mammoth's
    ``checkpoints/paused/``); ``--loadcheck`` on it retrains the interrupted task from these weights."""
    state = model.lean_checkpoint_state()
    state["current_task"] = record.tasks_done
    path = os.path.join(args.checkpoint_path, "paused", f"{checkpoints.run_name(args)}.pt")
    checkpoints.save_checkpoint(path, {"args": dict(vars(args)), "model_state": state, "record": record.to_dict(),
                                       "rng": checkpoints.rng_state(), "tasks_done": record.tasks_done})
    return path


def _write_outputs(results: dict[str, Any], results_file: str, make_plots: bool) -> list[str]:
    """Plots first, then the JSON (if the JSON fails, the plots are removed: no partial results)."""
    written: list[str] = []
    try:
        if make_plots and results["accuracy_matrix_class_il"]:
            from utils import plots
            stem = os.path.splitext(results_file)[0]
            written.append(plots.plot_accuracy_matrix(results["accuracy_matrix_class_il"],
                                                      f"{stem}_accuracy_matrix.png"))
            curves = {"class-IL": results["average_class_il_per_task"],
                      "task-IL": results["average_task_il_per_task"]}
            written.append(plots.plot_average_accuracy({k: v for k, v in curves.items() if v},
                                                       f"{stem}_average_accuracy.png"))
        write_json(results_file, results)
    except BaseException:
        for path in written:
            try:
                os.remove(path)
            except OSError:
                pass
        raise
    return written


def run(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Parse ``argv``, train, write the results JSON (and plots) and return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ckpt_args = None
    if "--loadcheck" in argv or any(a.startswith("--loadcheck=") for a in argv):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--loadcheck")
        pre.add_argument("--checkpoint_path", default="./checkpoints/")
        known = pre.parse_known_args(argv)[0]
        path = known.loadcheck
        if path and path.lower() not in ("none", "null"):
            local = resolve_checkpoint(path, known.checkpoint_path)  # a URL is downloaded (and cached) first
            argv = replace_flag_value(argv, "--loadcheck", local)
            if checkpoints.is_framework_checkpoint(local):
                ckpt_args = checkpoints.load_run_checkpoint(local)["args"]
    args = parse_args(argv, checkpoint_args=ckpt_args)
    distributed.check_launch(args.distributed)
    if args.distributed == "ddp":
        if args.device:
            get_device(args.device)  # checked as in a single process, before any process group exists
        device = distributed.init_from_env(args.dist_timeout, args.device)
        try:
            return _run(args, ckpt_args, device)
        finally:
            distributed.shutdown()
    return _run(args, ckpt_args, get_device(args.device))


def _run(args: argparse.Namespace, ckpt_args: Optional[dict], device: torch.device) -> dict[str, Any]:
    """Build, resume, train with a per-task callback, then collect and write the results."""
    started = time.perf_counter()
    main_process = distributed.is_main_process()
    if ckpt_args is not None:  # before reading any data: a checkpoint of another model/dataset is refused
        checkpoints.check_checkpoint_matches(args.loadcheck, ckpt_args, args, strict=False)
    results_file = ""

    def check_outputs(dataset: Any) -> None:
        nonlocal results_file
        results_file = _check_outputs(args, dataset, main_process)

    experiment = build_experiment(args, device, before_model=check_outputs)
    record = _resume(experiment)
    if args.resume and main_process:
        remove_stale_temporaries(os.path.dirname(os.path.abspath(results_file)), os.path.basename(results_file))
    trackers = open_loggers(args, checkpoints.run_name(args)) if main_process else []
    try:
        try:
            record = train(experiment.model, experiment.dataset, args, record,
                           on_task_end=_task_end_callback(experiment, trackers, main_process))
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM at a safe point (utils/stopping.py)
            where = checkpoints.run_dir(args) if args.savecheck else None
            hint = f"; checkpoints of finished tasks are in {where}: rerun with --resume" if where else ""
            if args.save_after_interrupt and main_process:
                paused = save_paused(args, experiment.model, record)
                hint += f"; the interrupted state is in {paused}: continue with --loadcheck {paused}"
            signum = getattr(exc, "signum", signal.SIGINT)
            error = UserError(f"stopped by {signal.Signals(signum).name} after {record.tasks_done} finished "
                              f"task(s){hint}")
            error.exit_code = EXIT_CODES.get(signum, 130)
            raise error from None
        results = collect_results(experiment, record, time.perf_counter() - started)
        write = main_process and not args.disable_log
        figures = _write_outputs(results, results_file, bool(args.plots)) if write else []
        for tracker in trackers:
            tracker.log_summary(summary_scalars(results))
    except BaseException:
        close_loggers(trackers, failed=True)
        raise
    close_loggers(trackers)
    distributed.barrier()
    if not main_process:
        return results
    task_il = results["final_task_il"]
    reported = results["setting"] in TASK_IL_SETTINGS
    print(f"final class-IL {percent(results['final_class_il'])}  task-IL "
          f"{percent(task_il) if reported else 'not reported (' + results['setting'] + ')'}")
    for figure in figures:
        print(f"plot: {figure}")
    if not args.disable_log:
        print(f"results: {results_file}", flush=True)
    results["results_file"] = None if args.disable_log else results_file
    return results


def replace_flag_value(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with the value of ``flag`` (``--flag v`` or ``--flag=v``) replaced."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == flag and i + 1 < len(out):
            out[i + 1] = value
        elif token.startswith(flag + "="):
            out[i] = f"{flag}={value}"
    return out


def _check_outputs(args: argparse.Namespace, dataset: Any, main_process: bool) -> str:
    """The results file, after checking (before any training) that the outputs can be written."""
    results_file = args.results_file or default_results_file(args, dataset.SETTING)
    if distributed.world_size() > args.batch_size:
        raise UserError(f"--batch_size {args.batch_size} is split across {distributed.world_size()} processes; "
                        f"use at least one sample per process")
    if main_process and not args.disable_log:
        check_writable(os.path.dirname(os.path.abspath(results_file)), "results")
    if main_process and args.savecheck:
        check_writable(checkpoints.run_dir(args), "checkpoint")
    return results_file


def _resume(experiment: Experiment) -> RunRecord:
    """The record of the tasks already done: empty, or restored with the model from a checkpoint.

    A ``--loadcheck`` file that is not this framework's (Mammoth's checkpoint, a bare state dict) only
    loads its weights into the backbone; the run starts at the first task (or ``--start_from``).
    """
    args = experiment.args
    if args.loadcheck and not checkpoints.is_framework_checkpoint(args.loadcheck):
        loaded, left = checkpoints.load_foreign_weights(experiment.model.net, args.loadcheck)
        print(f"loaded {loaded} tensors of {args.loadcheck} into the backbone ({left} keep their initial value)",
              file=sys.stderr)
        return RunRecord()
    resumed = _find_resume_state(experiment.args)
    if resumed is None:
        return RunRecord()
    record = _restore(experiment.model, experiment.dataset, *resumed, experiment.device)
    edit = resumed[1].get("edit")
    return record if edit is None else reevaluate_edited(experiment, record, edit)


def reevaluate_edited(experiment: Experiment, record: RunRecord, edit: dict[str, Any]) -> RunRecord:
    """A checkpoint written by ``python -m app.edit --save`` holds the edited model but the record of the run that
    trained it: the last row of the record is measured again on the test data, so the edited model is reported."""
    from utils.evaluate import evaluate

    with torch.no_grad():
        class_il, task_il = evaluate(experiment.model, experiment.dataset)
    record.accuracy_matrix_class_il[-1] = list(class_il)
    if record.accuracy_matrix_task_il:
        record.accuracy_matrix_task_il[-1] = list(task_il)
    if not distributed.is_main_process():
        return record
    targets = ", ".join(map(str, edit.get("targets", [])))
    print(f"edited checkpoint ({edit.get('mode', 'edit')} task(s) {targets}), evaluated on the test data: class-IL "
          f"per task {' '.join(percent(a) for a in class_il)}"
          + (f"; task-IL per task {' '.join(percent(a) for a in task_il)}" if task_il else ""), flush=True)
    return record


def _task_end_callback(experiment: Experiment, trackers: list, main_process: bool) -> Callable[[RunRecord], None]:
    """After each task: the checkpoint (``--savecheck``) and the trackers' per-task scalars."""
    args, model = experiment.args, experiment.model

    def end_of_task(rec: RunRecord) -> None:
        final = rec.tasks_done == experiment.dataset.n_tasks
        if (args.savecheck == "task" or (args.savecheck == "last" and final)) and main_process:
            checkpoints.save_checkpoint(checkpoints.checkpoint_path(args, rec.tasks_done), {
                "args": {k: v for k, v in vars(args).items()}, "model_state": model.lean_checkpoint_state(),
                "record": rec.to_dict(), "rng": checkpoints.rng_state(), "tasks_done": rec.tasks_done})
        for tracker in trackers:
            tracker.log_task(rec.tasks_done - 1, task_scalars(rec.accuracy_matrix_class_il,
                                                              rec.accuracy_matrix_task_il, rec.tasks_done - 1))
    return end_of_task


def collect_results(experiment: Experiment, record: RunRecord, seconds: float) -> dict[str, Any]:
    """The results JSON's content: arguments, accuracy matrices, summary metrics, timings, environment."""
    dataset, device = experiment.dataset, experiment.device
    timings = {"per_task": record.task_timings, "total_seconds": seconds}
    return {"args": vars(experiment.args), "setting": dataset.SETTING, "n_tasks": dataset.n_tasks,
            "tasks_done": record.tasks_done, "complete": record.tasks_done == dataset.n_tasks,
            "class_order": list(dataset.scenario.class_order) if dataset.scenario.class_order else None,
            "accuracy_matrix_class_il": record.accuracy_matrix_class_il,
            "accuracy_matrix_task_il": record.accuracy_matrix_task_il, **record.summary(),
            "test_set": experiment.test_set,
            "epoch_evaluations": record.epoch_evaluations, "start_from": record.start_from,
            "future_accuracy_class_il": record.future_accuracy_class_il,
            "timings": timings, "peak_memory_mb": peak_memory_mb(device), "device": str(device),
            "versions": versions()}


def wants_traceback(argv: list[str]) -> bool:
    """``--traceback`` (bare, ``--traceback 1`` or ``--traceback=true``) is on the command line."""
    for i, token in enumerate(argv):
        flag, _, value = token.partition("=")
        if flag == "--traceback":
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
            return value.strip().lower() not in ("0", "false", "no", "n", "off") if value else True
    return False


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry: user errors become one line on stderr and a non-zero exit code.

    ``--traceback`` adds the full traceback. Exit codes: 0 success, 1 an operating-system error
    outside the framework's own checks, 2 bad input, 3 the loss diverged (NaN/inf), 130 Ctrl-C
    (SIGINT) and 143 SIGTERM (the run stopped at a safe point; continue it with ``--resume``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    malloc_policy.keep_freed_memory()  # large buffers reused, not zeroed anew by the kernel (utils/malloc_policy.py)
    try:
        with sigterm_stops_at_safe_points():
            run(argv)
    except UserError as exc:
        if wants_traceback(argv):
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # before training started: nothing to resume
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name} before training started", file=sys.stderr)
        return EXIT_CODES.get(signum, 130)
    except (MemoryError, RuntimeError) as exc:  # an allocation no check foresaw (e.g. a model's own size flag)
        if not is_out_of_memory(exc):
            raise
        if wants_traceback(argv):
            traceback.print_exc()
        print(f"error: {out_of_memory_message(exc, argv)}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a file vanishing mid-run: still one line unless asked for the traceback
        if wants_traceback(argv):
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {one_line(exc) if exc.strerror is None else exc.strerror}{where}; rerun with --traceback "
              f"for details", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return 0
