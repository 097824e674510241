"""Mammoth's import path ``utils.buffer``: re-exports :class:`mammoth_compat.buffer.Buffer` and the replay helpers."""
from mammoth_compat.buffer import Buffer, reservoir  # noqa: F401
from mammoth_compat.replay import fill_buffer, icarl_replay  # noqa: F401
