"""Mammoth's import path ``utils.buffer``: re-exports :class:`mammoth_compat.buffer.Buffer`."""
from mammoth_compat.buffer import Buffer, reservoir  # noqa: F401
