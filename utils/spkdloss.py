"""Mammoth's import path ``utils.spkdloss``: re-exports from :mod:`mammoth_compat.losses`."""
from mammoth_compat.losses import SPKDLoss  # noqa: F401
