"""Mammoth's import path ``utils.simclrloss``: re-exports from :mod:`mammoth_compat.losses`."""
from mammoth_compat.losses import SupConLoss  # noqa: F401
