"""Atomic file writes: write to a temporary file in the same folder, fsync, rename, fsync the folder.

A reader (or a process restarted after a crash) sees either the old file or the complete new one,
never a partial one. A crash can leave a ``.tmp-*`` file behind: :func:`remove_stale_temporaries`
deletes them when a run is resumed. Write errors become one-line :class:`UserError` messages
(no space left, permission denied) and leave no temporary file.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from typing import Any, Callable

from utils.errors import UserError
from utils.killpoints import kill_now, kill_requested

TEMP_PREFIX = ".tmp-"


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call ``write(fh)`` on a temporary file and move it to ``path`` only once it is complete."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=os.path.basename(path))
    except OSError as exc:
        raise UserError(_write_error(folder, exc)) from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            if kill_requested("write", os.path.basename(path)):  # test hook: die half-way through
                fh.truncate(max(1, fh.tell() // 2))
                fh.flush()
                kill_now()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _silent_remove(tmp)
        raise UserError(_write_error(path, exc)) from None
    except BaseException:
        _silent_remove(tmp)
        raise
    _fsync_folder(folder)


def _write_error(path: str, exc: OSError) -> str:
    if exc.errno == errno.ENOSPC or exc.errno == getattr(errno, "EDQUOT", -1):
        return f"no space left on the device to write {path}; free some space or write to another disk"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {path}: {exc.strerror}; choose a writable location"
    return f"cannot write {path}: {exc.strerror or exc}; check free space and permissions"


def _fsync_folder(folder: str) -> None:
    """Make the rename durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str, suffix: str = "") -> list[str]:
    """Delete the ``.tmp-*<suffix>`` files a killed process left in ``folder``; return their names."""
    if not os.path.isdir(folder):
        return []
    stale = [f for f in os.listdir(folder) if f.startswith(TEMP_PREFIX) and f.endswith(suffix)]
    for name in stale:
        _silent_remove(os.path.join(folder, name))
    return stale


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_json(path: str, data: Any) -> None:
    """Atomically write ``data`` as indented, strict JSON (NaN and infinities written as null)."""
    text = json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False)
    atomic_write(path, lambda fh: fh.write(text + "\n"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def check_writable(folder: str, what: str) -> None:
    """Fail early (before any training) if ``folder`` cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX + "probe-")
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise UserError(f"{what} folder {folder} is not writable ({exc.strerror}); pass a writable path") from None
