"""Mammoth's import path ``utils.conf``: re-exports :mod:`mammoth_compat.conf`."""
from mammoth_compat.conf import base_path, create_seeded_dataloader, get_device, set_random_seed, warn_once  # noqa: F401
