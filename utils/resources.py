"""Memory checks before allocation: a single bad value (a flag, an array shape in a data file) that would
need more memory than the machine has is a one-line :class:`UserError` naming the value, not an allocator
traceback minutes later."""
from __future__ import annotations

import os
import re
from typing import Any, Optional

from utils.errors import UserError

FLOAT_BYTES = 4
# A data-loader worker process costs at least this much (an interpreter with torch imported).
WORKER_BYTES = 64 * 2 ** 20


def available_memory() -> int:
    """Bytes of memory available to this process (``CL_MEMORY_LIMIT`` overrides, for tests)."""
    override = os.environ.get("CL_MEMORY_LIMIT")
    if override:
        return int(float(override))
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 ** 62  # unknown: no check


def human(nbytes: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (binary units)."""
    value, unit = float(nbytes), "B"
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "EB"):
        if value < 1024 or unit == "EB":
            break
        value /= 1024
    return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"


def check_fits(nbytes: float, what: str, fix: str) -> None:
    """``what`` needs ``nbytes``: a one-line error with ``fix`` when that exceeds the available memory."""
    available = available_memory()
    if nbytes > available:
        raise UserError(f"{what} needs {human(nbytes)} of memory but {human(available)} is available; {fix}")


def check_run_memory(args: Any, dataset: Any) -> None:
    """Memory-shaped flags against the machine before any model, buffer or batch is allocated.

    Call it once the dataset's splits are read (a batch never holds more images than a task). Checked: one image at ``img_size`` (``--img_size``), one train batch (augmented + not augmented
    copies, ``--batch_size``), one evaluation batch (``--eval_batch_size``), the rehearsal buffer
    (``--buffer_size``) and the data-loader workers (``--num_workers``). Activations of the network
    are not estimated.
    """
    train, test = dataset.splits
    n_train_max = max(len(dataset.task_indices(train, t)) for t in range(dataset.n_tasks))
    n_test_max = max(len(dataset.task_indices(test, t, cumulative=True)) for t in range(dataset.n_tasks))
    channels, img_size = int(dataset.in_chans), int(dataset.img_size)
    image = channels * img_size * img_size * FLOAT_BYTES
    shape = f"{channels}x{img_size}x{img_size}"
    size_flag = "--img_size" if getattr(args, "img_size", None) else "the dataset's image size"
    check_fits(3 * image, f"{size_flag} {img_size}: one {shape} image", "use a smaller --img_size")
    batch = min(int(args.batch_size), max(1, n_train_max))
    check_fits(3 * batch * image, f"--batch_size {args.batch_size}: a training batch of {batch} {shape} images",
               "use a smaller --batch_size (or --img_size)")
    eval_size = getattr(args, "eval_batch_size", None) or max(int(args.batch_size), 128)
    eval_batch = min(int(eval_size), max(1, n_test_max))
    flag = "--eval_batch_size" if getattr(args, "eval_batch_size", None) else "--batch_size"
    check_fits(2 * eval_batch * image, f"{flag} {eval_size}: an evaluation batch of {eval_batch} {shape} images",
               f"use a smaller {flag}")
    buffer_size: Optional[int] = getattr(args, "buffer_size", None)
    if buffer_size:
        check_fits(int(buffer_size) * image, f"--buffer_size {buffer_size}: a rehearsal buffer of {shape} images",
                   "use a smaller --buffer_size")
    workers = int(getattr(args, "num_workers", 0) or 0)
    if workers:
        check_fits(workers * WORKER_BYTES, f"--num_workers {workers}: that many data-loader processes",
                   f"use at most {os.cpu_count() or 1} (the number of CPU cores)")


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocator failure (CPU or GPU), as raised by numpy or torch."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text


def out_of_memory_message(exc: BaseException, argv: list[str]) -> str:
    """One line for an allocation that the checks above could not foresee: what was asked for and the largest
    integer values on the command line (the usual culprit is one of them)."""
    text = str(exc)
    asked = re.search(r"allocate (\d+) bytes", text)
    size = f" trying to allocate {human(int(asked.group(1)))}" if asked else ""
    if not asked:
        gpu = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGT]iB)", text)
        size = f" trying to allocate {gpu.group(1)}" if gpu else ""
    given = []
    for i, token in enumerate(argv):
        flag, _, value = token.partition("=")
        if not flag.startswith("--"):
            continue
        value = value or (argv[i + 1] if i + 1 < len(argv) else "")
        if re.fullmatch(r"\d+", value):
            given.append((int(value), flag))
    largest = ", ".join(f"{flag} {value}" for value, flag in sorted(given, reverse=True)[:3])
    hint = f"; the largest integer values given: {largest}" if largest else ""
    return (f"out of memory{size}{hint}; lower the value that sizes this allocation (rerun with --traceback to "
            f"see where it happened)")
