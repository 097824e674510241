"""Mammoth's import path ``utils.augmentations``: re-exports :mod:`mammoth_compat.augmentations`."""
from mammoth_compat.augmentations import *  # noqa: F401,F403
from mammoth_compat.augmentations import __all__  # noqa: F401
