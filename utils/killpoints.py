"""Test-only crash injection: ``CL_TEST_KILL_AT=<point>`` makes the process SIGKILL itself there.

Points (1-based numbers): ``train:<task>:<epoch>:<step>`` (after that training step),
``begin_task:<task>`` (right after the model's ``begin_task``, e.g. its Fisher pass, before
training), ``eval:<task>`` (mid-evaluation after that task, one test loader done),
``write:<file name>`` (an atomic write killed with half of the temporary file written).
When the variable is unset each check costs one dictionary lookup.

``CL_TEST_PAUSE_AT=<point>`` (same points) instead pauses there: the process writes the file
``CL_TEST_PAUSE_FILE`` and waits (at most 60 s) until it receives SIGTERM, so a test can send the
signal from outside at a known moment.
"""
from __future__ import annotations

import os
import signal
import time

ENV_VAR = "CL_TEST_KILL_AT"
PAUSE_VAR, PAUSE_FILE_VAR = "CL_TEST_PAUSE_AT", "CL_TEST_PAUSE_FILE"
RANK_VAR = "CL_TEST_KILL_RANK"


def kill_requested(name: str, *index: object) -> bool:
    """True when ``CL_TEST_KILL_AT`` names this point, e.g. ``kill_requested("eval", 2)`` for ``eval:2``."""
    target = os.environ.get(ENV_VAR)
    if not target or target != ":".join([name, *map(str, index)]):
        return False
    only_rank = os.environ.get(RANK_VAR)  # multi-process tests: kill one rank only
    return only_rank is None or only_rank == os.environ.get("RANK", "0")


def kill_now() -> None:
    """SIGKILL this process: no handler, no cleanup, no flush (a power cut as seen by the files)."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(name: str, *index: object) -> None:
    """Die here if ``CL_TEST_KILL_AT`` names this point."""
    if kill_requested(name, *index):
        kill_now()
    if os.environ.get(PAUSE_VAR) and os.environ[PAUSE_VAR] == ":".join([name, *map(str, index)]):
        pause_until_sigterm()


def pause_until_sigterm(limit_seconds: float = 60.0) -> None:
    """Announce the pause (``CL_TEST_PAUSE_FILE``) and wait for SIGTERM."""
    from utils.stopping import stop_requested
    with open(os.environ[PAUSE_FILE_VAR], "w") as fh:
        fh.write(str(os.getpid()))
    deadline = time.monotonic() + limit_seconds
    while not stop_requested() and time.monotonic() < deadline:
        time.sleep(0.01)
