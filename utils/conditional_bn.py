"""Mammoth's import path ``utils.conditional_bn``: re-exports :mod:`mammoth_compat.layers`' conditional norms."""
from mammoth_compat.layers import ConditionalBatchNorm1d, ConditionalBatchNorm2d  # noqa: F401
