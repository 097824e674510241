"""Mammoth's import path ``utils.schedulers``: re-exports :mod:`mammoth_compat.schedulers`."""
from mammoth_compat.schedulers import CosineSchedule, CosineSchedulerWithLinearWarmup, get_scheduler  # noqa: F401
