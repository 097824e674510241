"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

from utils.errors import UserError


def atomic_write(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
    """Call ``write(fh)`` on a temporary file and move it to ``path`` only once it is complete."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror}; choose a writable location") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _silent_remove(tmp)
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; check free space and permissions") from None
    except BaseException:
        _silent_remove(tmp)
        raise


def _silent_remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_json(path: str, data: Any) -> None:
    """Atomically write ``data`` as indented JSON (NaN written as null)."""
    text = json.dumps(_finite(data), indent=2, sort_keys=False)
    atomic_write(path, lambda fh: fh.write(text + "\n"))


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:
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
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.remove(tmp)
    except OSError as exc:
        raise UserError(f"{what} folder {folder} is not writable ({exc.strerror}); pass a writable path") from None
