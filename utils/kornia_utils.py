"""Mammoth's import path ``utils.kornia_utils``: re-exports :mod:`mammoth_compat.kornia_utils`."""
from mammoth_compat.kornia_utils import KorniaAugNoGrad, KorniaMultiAug, to_kornia_transform  # noqa: F401
