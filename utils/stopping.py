"""SIGTERM handled like Ctrl-C: the run stops at the next safe point and can be continued with ``--resume``.

Schedulers (SLURM, Kubernetes, ...) send SIGTERM some seconds before they kill a job. The handler only
records the request; the training loop calls :func:`check_stop` at safe points (after each training step
and after each finished task, whose checkpoint is then complete on disk) and raises :class:`Stopped`
there. A second SIGTERM stops at once (like a second Ctrl-C). Under ``--distributed ddp`` the ranks agree
on the request (one tiny all-reduce per check), so all of them stop at the same step.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from utils import distributed

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, the shell's convention

_requested: Optional[int] = None


class Stopped(KeyboardInterrupt):
    """The run was asked to stop by a signal (SIGTERM, or SIGINT/Ctrl-C)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_sigterm(signum: int, frame: Any) -> None:
    global _requested
    if _requested is not None:
        raise Stopped(signum)
    _requested = signum


def stop_requested() -> bool:
    """True once SIGTERM was received (in this process)."""
    return _requested is not None


def check_stop() -> None:
    """A safe point: raise :class:`Stopped` when a stop was requested here (or, in DDP, on any rank)."""
    if distributed.any_rank(_requested is not None):
        raise Stopped(_requested or signal.SIGTERM)


@contextmanager
def sigterm_stops_at_safe_points() -> Iterator[None]:
    """Install the SIGTERM handler for the duration of a run (main thread only; restored afterwards)."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _requested = None
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _requested = None
