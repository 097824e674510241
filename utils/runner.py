"""One run from the command line: configuration -> dataset -> backbone -> model -> loop -> results."""
from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import subprocess
import sys
import time
import traceback
from typing import Any, Optional

import numpy as np
import torch

from backbone import get_backbone
from datasets import get_dataset
from models import get_model_class
from utils import checkpoints, distributed
from utils.config import ROOT, parse_args
from utils.errors import UserError
from utils.io import check_writable, remove_stale_temporaries, write_json
from utils.loggers import close_loggers, open_loggers, summary_scalars, task_scalars
from utils.training import RunRecord, train


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_device(name: Optional[str]) -> torch.device:
    """``--device`` or the best available: cuda, then mps, then cpu."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UserError(f"bad --device '{name}'; use cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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
    if device.type == "cuda":
        out["cuda"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def default_results_file(args: argparse.Namespace, setting: str) -> str:
    return os.path.join(args.base_path, "results", setting, args.dataset, args.model,
                        f"{checkpoints.run_name(args)}.json")


def check_compatibility(model_cls: Any, dataset: Any) -> None:
    """The model must support the dataset's setting (class-il, task-il, domain-il, ...)."""
    if dataset.SETTING not in model_cls.COMPATIBILITY:
        raise UserError(f"model {model_cls.NAME} does not support the {dataset.SETTING} setting of {dataset.NAME} "
                        f"(it supports: {', '.join(model_cls.COMPATIBILITY)}); pick another model or dataset")


def check_every_task_has_data(dataset: Any) -> None:
    """Fail before training (not at task k) when a task of the split has no training images."""
    train, _ = dataset.splits
    for task in range(dataset.N_TASKS):
        if len(dataset.task_indices(train, task)) == 0:
            start, end = dataset.get_offsets(task)
            raise UserError(f"{dataset.NAME}: task {task + 1} (classes {start}-{end - 1}) has no training images; "
                            f"check the labels of the data or the class split (--n_tasks/--classes_per_task)")


def _find_resume_state(args: argparse.Namespace) -> Optional[tuple[str, dict[str, Any]]]:
    """The checkpoint to continue from (``--loadcheck``, or the newest good one of this run with ``--resume``)."""
    if args.loadcheck:
        state = checkpoints.load_checkpoint(args.loadcheck)
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
        checkpoints.check_checkpoint_matches(found[0], found[1]["args"], args, strict=True)
        return found
    return None


def _restore(model: Any, dataset: Any, path: str, state: dict[str, Any], device: torch.device) -> RunRecord:
    """Load a checkpoint into ``model``/``dataset``/the RNGs; return the record of the finished tasks."""
    try:
        record = RunRecord.from_dict(state["record"])
        if record.tasks_done > dataset.N_TASKS:
            raise ValueError(f"it has {record.tasks_done} finished tasks, the dataset only {dataset.N_TASKS}")
        for _ in range(record.tasks_done):  # rebuild the test loaders of the finished tasks
            dataset.get_data_loaders()
        model.load_lean_checkpoint_state(state["model_state"], dataset, path)
        checkpoints.set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # e.g. tensor shapes of another backbone
        raise UserError(f"checkpoint {path} does not fit this model/backbone/dataset "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                        f"use the arguments it was made with") from None
    model.to(device)
    print(f"resumed from {path}: {record.tasks_done} of {dataset.N_TASKS} tasks done", file=sys.stderr)
    return record


def _write_outputs(results: dict[str, Any], results_file: str, make_plots: bool) -> list[str]:
    """Plots first, then the JSON (if the JSON fails, the plots are removed: no partial results)."""
    written: list[str] = []
    try:
        if make_plots and results["accuracy_matrix_class_il"]:
            from utils import plots
            stem = os.path.splitext(results_file)[0]
            written.append(plots.plot_accuracy_matrix(results["accuracy_matrix_class_il"],
                                                      f"{stem}_accuracy_matrix.png"))
            written.append(plots.plot_average_accuracy({"class-IL": results["average_class_il_per_task"],
                                                        "task-IL": results["average_task_il_per_task"]},
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
        path = pre.parse_known_args(argv)[0].loadcheck
        if path and path.lower() not in ("none", "null"):
            ckpt_args = checkpoints.load_checkpoint(path)["args"]
    args = parse_args(argv, checkpoint_args=ckpt_args)
    if args.distributed == "ddp":
        device = distributed.init_from_env(args.dist_timeout, args.device)
        try:
            return _run(args, ckpt_args, device)
        finally:
            distributed.shutdown()
    return _run(args, ckpt_args, get_device(args.device))


def _run(args: argparse.Namespace, ckpt_args: Optional[dict], device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    main_process = distributed.is_main_process()
    if args.seed is not None:
        set_random_seed(args.seed)
    if ckpt_args is not None:  # before reading any data: a checkpoint of another model/dataset is refused
        checkpoints.check_checkpoint_matches(args.loadcheck, ckpt_args, args, strict=False)

    dataset = get_dataset(args)
    dataset.splits  # read (or download) the data now: data errors come before any training output
    check_every_task_has_data(dataset)
    model_cls = get_model_class(args.model)
    check_compatibility(model_cls, dataset)
    if args.distributed == "ddp" and model_cls.DDP_UNSUPPORTED:
        raise UserError(f"model {model_cls.NAME} does not support --distributed ddp: {model_cls.DDP_UNSUPPORTED}; "
                        f"run it in a single process")
    results_file = args.results_file or default_results_file(args, dataset.SETTING)
    if distributed.world_size() > args.batch_size:
        raise UserError(f"--batch_size {args.batch_size} is split across {distributed.world_size()} processes; "
                        f"use at least one sample per process")
    if main_process:
        check_writable(os.path.dirname(os.path.abspath(results_file)), "results")
        if args.savecheck:
            check_writable(checkpoints.run_dir(args), "checkpoint")

    backbone = get_backbone(args, dataset.N_CLASSES, dataset.img_size, dataset.IN_CHANS)
    model = model_cls(backbone, dataset.get_loss(), args, dataset.get_transform(), dataset=dataset).to(device)
    distributed.broadcast_module(model)  # identical replicas even if construction drew different numbers

    record = RunRecord()
    resumed = _find_resume_state(args)
    if resumed is not None:
        record = _restore(model, dataset, *resumed, device)
    if args.resume and main_process:
        remove_stale_temporaries(os.path.dirname(os.path.abspath(results_file)), os.path.basename(results_file))
    trackers = open_loggers(args, checkpoints.run_name(args)) if main_process else []

    def end_of_task(rec: RunRecord) -> None:
        final = rec.tasks_done == dataset.N_TASKS
        if (args.savecheck == "task" or (args.savecheck == "last" and final)) and main_process:
            checkpoints.save_checkpoint(checkpoints.checkpoint_path(args, rec.tasks_done), {
                "args": {k: v for k, v in vars(args).items()}, "model_state": model.lean_checkpoint_state(),
                "record": rec.to_dict(), "rng": checkpoints.rng_state(), "tasks_done": rec.tasks_done})
        for tracker in trackers:
            tracker.log_task(rec.tasks_done - 1, task_scalars(rec.accuracy_matrix_class_il,
                                                              rec.accuracy_matrix_task_il, rec.tasks_done - 1))

    try:
        try:
            record = train(model, dataset, args, record, on_task_end=end_of_task)
        except KeyboardInterrupt:
            where = checkpoints.run_dir(args) if args.savecheck else None
            hint = f"; checkpoints of finished tasks are in {where}: rerun with --resume" if where else ""
            raise UserError(f"interrupted after {record.tasks_done} finished task(s){hint}") from None

        timings = {"per_task": record.task_timings, "total_seconds": time.perf_counter() - started}
        results = {"args": vars(args), "setting": dataset.SETTING, "n_tasks": dataset.N_TASKS,
                   "tasks_done": record.tasks_done, "complete": record.tasks_done == dataset.N_TASKS,
                   "class_order": list(dataset.scenario.class_order) if dataset.scenario.class_order else None,
                   "accuracy_matrix_class_il": record.accuracy_matrix_class_il,
                   "accuracy_matrix_task_il": record.accuracy_matrix_task_il, **record.summary(),
                   "timings": timings, "peak_memory_mb": peak_memory_mb(device), "device": str(device),
                   "versions": versions()}
        figures = _write_outputs(results, results_file, bool(args.plots)) if main_process else []
        for tracker in trackers:
            tracker.log_summary(summary_scalars(results))
    except BaseException:
        close_loggers(trackers, failed=True)
        raise
    close_loggers(trackers)
    distributed.barrier()
    if not main_process:
        return results
    print(f"final class-IL {results['final_class_il']:.2f}  task-IL {results['final_task_il']:.2f}")
    for figure in figures:
        print(f"plot: {figure}")
    print(f"results: {results_file}", flush=True)
    results["results_file"] = results_file
    return results


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
    outside the framework's own checks, 2 bad input, 3 the loss diverged (NaN/inf).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        run(argv)
    except UserError as exc:
        if wants_traceback(argv):
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. a file vanishing mid-run: still one line unless asked for the traceback
        if wants_traceback(argv):
            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}; rerun with --traceback for details", file=sys.stderr)
        return 1
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    return 0
