"""Random streams keyed by (seed, task, purpose): identical on every DDP rank, independent of sharding.

Every random draw a model or the training loop makes comes from :func:`generator` (an explicit
``torch.Generator``) or runs inside :func:`seeded` (code that draws from the global RNGs, e.g.
torchvision transforms or ``nn.init``: the global torch/CUDA, numpy and python RNGs are seeded for
the block and restored after it). A stream depends only on the run's seed, the task and a purpose
string, never on the rank, the shard, the image sizes or ``--num_workers``, so replicas stay
bitwise identical and a resumed run draws what an uninterrupted one draws.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Any, Iterator, Optional, Union

import numpy as np
import torch

from utils import accelerator, distributed

_unseeded: Optional[int] = None


def derive_seed(seed: int, task: int, purpose: str) -> int:
    """A 63-bit seed from (seed, task, purpose) (sha256: unrelated streams for nearby inputs)."""
    digest = hashlib.sha256(f"{int(seed)}/{int(task)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def run_seed(args: Any) -> int:
    """``--seed``, or (no seed given) one random seed per process, drawn on rank 0 and shared with every rank.

    Without ``--seed`` the first call is a collective under DDP: every rank must reach it (all ranks make
    the same calls in the same order)."""
    global _unseeded
    seed = getattr(args, "seed", None)
    if seed is not None:
        return int(seed)
    if _unseeded is None:
        _unseeded = int(distributed.broadcast_object(random.SystemRandom().randrange(2 ** 62)))
    return _unseeded


def generator(seed: int, task: int, purpose: str, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from (seed, task, purpose)."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(derive_seed(seed, task, purpose))
    return gen


@contextlib.contextmanager
def seeded(seed: int, device: Optional[Union[str, torch.device]] = None) -> Iterator[None]:
    """Run a block with the global torch (CPU and, for an accelerator ``device``, that device's), numpy and python
    RNGs seeded from ``seed``; their previous states are restored afterwards (the block consumes nothing outside
    it). Code that draws on an accelerator must name its ``device``, or its draws are not seeded."""
    device = torch.device(device) if device is not None else None
    on_device = device is not None and accelerator.is_accelerator(device)
    py_state, np_state = random.getstate(), np.random.get_state()
    cpu_state = torch.get_rng_state()
    device_state = accelerator.get_rng_state(device) if on_device else None
    torch.default_generator.manual_seed(seed)
    if on_device:
        accelerator.seed_rng(device, seed)
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if on_device:
            accelerator.set_rng_state(device, device_state)
        random.setstate(py_state)
        np.random.set_state(np_state)


def seeded_for(args: Any, task: int, purpose: str, device: Optional[Union[str, torch.device]] = None):
    """:func:`seeded` with the seed derived from (the run's seed, ``task``, ``purpose``)."""
    return seeded(derive_seed(run_seed(args), task, purpose), device)
