"""User-facing errors: one line that says what is wrong and how to fix it."""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """Bad input from the user (flag, config, data, checkpoint). Printed as one line, exit code 2."""

    exit_code = 2


class TrainingDiverged(UserError):
    """The loss became NaN or infinite. Printed as one line, exit code 3."""

    exit_code = 3


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean: a, b?)' hint, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message; for an error re-raised from a DataLoader worker (whose message
    is ``Caught X in DataLoader worker process N`` plus the worker's traceback) the original message."""
    text = str(exc)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "utils.errors.UserError: <the original message>"
        text = last.split(": ", 1)[1] if ": " in last else last
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
