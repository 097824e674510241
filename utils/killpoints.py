"""Test-only crash injection: ``CL_TEST_KILL_AT=<point>`` makes the process SIGKILL itself there.

Points (1-based numbers): ``train:<task>:<epoch>:<step>`` (after that training step),
``begin_task:<task>`` (right after the model's ``begin_task``, e.g. its Fisher pass, before
training), ``eval:<task>`` (mid-evaluation after that task, one test loader done),
``write:<file name>`` (an atomic write killed with half of the temporary file written).
When the variable is unset each check costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV_VAR = "CL_TEST_KILL_AT"


def kill_requested(name: str, *index: object) -> bool:
    """True when ``CL_TEST_KILL_AT`` names this point, e.g. ``kill_requested("eval", 2)`` for ``eval:2``."""
    target = os.environ.get(ENV_VAR)
    return bool(target) and target == ":".join([name, *map(str, index)])


def kill_now() -> None:
    """SIGKILL this process: no handler, no cleanup, no flush (a power cut as seen by the files)."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_point(name: str, *index: object) -> None:
    """Die here if ``CL_TEST_KILL_AT`` names this point."""
    if kill_requested(name, *index):
        kill_now()
