"""Mammoth's ``utils.conf`` helpers used by model files (``utils.conf`` re-exports them)."""
from __future__ import annotations

import logging
import random
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

_BASE_PATH = "./data/"
_WARNED: set[str] = set()


def warn_once(*msg: Any) -> None:
    """Log a warning the first time this message (its parts joined by spaces) is given."""
    text = " ".join(str(m) for m in msg)
    if text not in _WARNED:
        _WARNED.add(text)
        logging.warning(text)


def get_device() -> torch.device:
    """The best available device (the machine's accelerator, else cpu); a model should prefer ``self.device``."""
    from utils.accelerator import default_device
    return default_device()


def base_path(override: Optional[str] = None) -> str:
    """Mammoth's data root: ``override`` if given, else ``./data/`` (the framework passes ``--base_path``
    to its datasets explicitly; this helper only serves model files that read it)."""
    return override if override is not None else _BASE_PATH


def set_random_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator too


def create_seeded_dataloader(args: Any, dataset: Dataset, **kwargs: Any) -> DataLoader:
    """A DataLoader whose shuffle order comes from the global torch RNG (seeded by ``--seed``)."""
    from datasets.utils.sources import seed_worker
    kwargs.setdefault("num_workers", getattr(args, "num_workers", 0) or 0)
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,)).item()))
    return DataLoader(dataset, generator=generator, worker_init_fn=seed_worker if kwargs["num_workers"] else None,
                      **kwargs)
