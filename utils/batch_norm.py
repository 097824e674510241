"""Mammoth's import path ``utils.batch_norm``: re-exports :class:`mammoth_compat.layers.bn_track_stats`."""
from mammoth_compat.layers import bn_track_stats  # noqa: F401
