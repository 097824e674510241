"""The process's memory management: malloc settings that keep freed buffers for the next allocation instead of handing
them back to the kernel, and Python's garbage collector paused over hot loops.

With glibc's defaults, buffers above a few megabytes (a batch's activations, a Fisher pass's per-layer gradients)
are mapped on allocation and unmapped when freed, so every operation that makes one gets fresh pages the kernel
must zero: on a CPU this costs more than the arithmetic of many elementwise operations
(``python -m benchmarks.malloc_env``). :func:`keep_freed_memory`, called by the run's entry point, takes them from
the heap and keeps the heap: as starting the process with ``MALLOC_MMAP_MAX_=0`` and a large
``MALLOC_TRIM_THRESHOLD_`` would. The process keeps its peak
memory until it ends. Settings the user already gave (any ``MALLOC_*`` variable or ``GLIBC_TUNABLES``) are left as
they are; other C libraries are left alone.
"""
from __future__ import annotations

import ctypes
import gc
import os
from contextlib import contextmanager
from typing import Iterator, Mapping, Optional

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt's parameters (glibc's malloc.h)
_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: the heap is trimmed only past 2 GiB free at its top


def user_settings(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets glibc's malloc itself."""
    return "GLIBC_TUNABLES" in environ or any(name.startswith("MALLOC_") for name in environ)


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(environ: Optional[Mapping[str, str]] = None) -> bool:
    """No mapped buffers and no heap trimming below 2 GiB for this process (glibc's ``mallopt``); whether applied
    (not with another C library, nor when ``environ`` (default: the process's) has malloc settings of its own)."""
    if user_settings(os.environ if environ is None else environ):
        return False
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off (on again after, if it was): a loop that makes thousands of short-lived
    objects (the Fisher's class backwards) sets off collections that scan every live object of the process, 3-4 % of
    a CPU Fisher pass (perf). Reference cycles made meanwhile wait for the next collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
