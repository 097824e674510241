"""Mammoth's import path ``utils.gss_buffer``: re-exports :class:`mammoth_compat.gss_buffer.Buffer`."""
from mammoth_compat.gss_buffer import Buffer  # noqa: F401
