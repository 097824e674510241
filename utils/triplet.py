"""Mammoth's import path ``utils.triplet``: re-exports from :mod:`mammoth_compat.losses`."""
from mammoth_compat.losses import batch_hard_triplet_loss, negative_only_triplet_loss  # noqa: F401
