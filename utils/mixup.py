"""Mammoth's import path ``utils.mixup``: re-exports from :mod:`mammoth_compat.losses`."""
from mammoth_compat.losses import mixup  # noqa: F401
