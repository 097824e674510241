"""Mammoth's import path ``utils.ring_buffer``: re-exports :class:`mammoth_compat.ring_buffer.RingBuffer`."""
from mammoth_compat.ring_buffer import RingBuffer  # noqa: F401
