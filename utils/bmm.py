"""Mammoth's import path ``utils.bmm``: re-exports :class:`mammoth_compat.bmm.BetaMixture1D`."""
from mammoth_compat.bmm import BetaMixture1D  # noqa: F401
