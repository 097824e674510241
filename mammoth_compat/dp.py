"""Mammoth's ``utils.distributed`` data-parallel helpers: ``CustomDP`` and ``make_dp``."""
from __future__ import annotations

from typing import Any

import torch
from torch.nn import DataParallel


class CustomDP(DataParallel):
    """``DataParallel`` whose wrapped module's attributes stay reachable without ``.module``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def make_dp(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` split over every visible GPU (on the first one); unchanged without CUDA (torch's DataParallel
    is CUDA's)."""
    from utils import accelerator
    count = accelerator.device_count("cuda")
    if not count:
        return model
    return CustomDP(model, device_ids=list(range(count))).to(torch.device("cuda", 0))
