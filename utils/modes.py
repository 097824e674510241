"""Module-mode helpers shared by every layer."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module.eval()`` inside the block; its train/eval mode (of itself only, as ``train(mode)`` sets
    it for all children) is restored afterwards, also when the block raises."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
