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
