"""What a data path is, before anything reads it: a regular file or folder, never a device, pipe or socket
(a character device such as ``/dev/zero`` never ends; opening a pipe blocks), and no symbolic-link loop."""
from __future__ import annotations

import os
import stat

from utils.errors import UserError

KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"),
         (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str:
    """'a character device', 'a named pipe', ... for a mode that is neither a regular file nor a folder."""
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def check_regular(path: str, what: str, folder_ok: bool = False, fix: str = "") -> None:
    """``path`` (named ``what`` in the message, e.g. ``--data_path``) must be a regular file (or, with
    ``folder_ok``, a folder); symbolic links are followed. Anything else is a one-line :class:`UserError`
    (ending in ``fix`` when given)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except OSError as exc:  # e.g. a symbolic-link loop
        raise UserError(f"{what} {path} cannot be read ({exc.strerror}); fix or remove it") from None
    if stat.S_ISREG(mode) or (folder_ok and stat.S_ISDIR(mode)):
        return
    if stat.S_ISDIR(mode):
        raise UserError(f"{what} {path} is a folder, not a file; pass the file")
    expected = "a file or a folder" if folder_ok else "a file"
    raise UserError(f"{what} {path} is {special_kind(mode)}, not {expected}; "
                    f"{fix or 'pass ' + expected + ' that holds the data'}")
